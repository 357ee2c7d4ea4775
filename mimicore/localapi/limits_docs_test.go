package localapi

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store"
)

// TestBodyLimitsMatchDocs requires the field limits written in the struct
// definitions of docs/protocol.md §10.4 to be those the decoders enforce,
// so that a backend sizing its fields from the document is never refused.
func TestBodyLimitsMatchDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	start := strings.Index(doc, "### 10.4 Bodies")
	if start < 0 {
		t.Fatal("docs/protocol.md has no §10.4 Bodies")
	}
	doc = doc[start:]
	doc, _, _ = strings.Cut(doc[strings.Index(doc, "```")+3:], "```")
	for _, tc := range []struct {
		field string // the field's declaration
		limit string // its comment starts with this
	}{
		{"opaque signature_key<V>;", fmt.Sprintf("1-%d bytes", MaxSignatureKeyLen)},
		{"opaque key_package<V>;", fmt.Sprintf("1-%d bytes", MaxKeyPackageLen)},
		{"KeyPackageEntry key_packages<V>;", fmt.Sprintf("1-%d entries", MaxPublish)},  // PublishRequest
		{"KeyPackageEntry key_packages<V>; ", fmt.Sprintf("0-%d entries", MaxPublish)}, // KeyPackageList
		{"opaque group_id<V>;", fmt.Sprintf("0-%d bytes", store.MaxIDSize)},
		{"opaque sender<V>;", fmt.Sprintf("0-%d bytes", store.MaxClientURISize)},
		{"opaque message<V>;", fmt.Sprintf("1-%d bytes", store.MaxQueuedMessageSize)},
		{"opaque target<V>;", fmt.Sprintf("1-%d bytes", moh.MaxURILen)},
	} {
		t.Run(tc.field+tc.limit, func(t *testing.T) {
			re := regexp.MustCompile(regexp.QuoteMeta(strings.TrimSpace(tc.field)) + `\s+/\* ` + regexp.QuoteMeta(tc.limit) + `\b`)
			if !re.MatchString(doc) {
				t.Errorf("§10.4 does not declare %s with /* %s", tc.field, tc.limit)
			}
		})
	}
}
