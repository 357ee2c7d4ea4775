package moh

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// endpointTableHeader is the header row of docs/protocol.md §2.1; the
// HTTP layer's test checks paths, methods and policy names against the
// routing table, this one the cells that name moh's types.
const endpointTableHeader = "| path | methods | body | request types | authentication | policy name |"

// TestEndpointTableNamesMatchCode requires the endpoint table of
// docs/protocol.md to use only the fixed body and authentication
// vocabulary, the names RequestType.String and ProviderRequestType.String
// return, and to route every client-acceptable DS request type and every
// provider request type to exactly one endpoint.
func TestEndpointTableNamesMatchCode(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(doc), endpointTableHeader+"\n|---|---|---|---|---|---|\n")
	if !ok {
		t.Fatalf("docs/protocol.md has no table headed %q", endpointTableHeader)
	}
	if end := strings.Index(table, "\n\n"); end >= 0 {
		table = table[:end]
	}
	dsNames := map[string]RequestType{}
	for typ := RequestType(0); typ.Known(); typ++ {
		dsNames[typ.String()] = typ
	}
	providerNames := map[string]ProviderRequestType{}
	for typ := ProviderRequestType(0); typ <= maxProviderRequestType; typ++ {
		providerNames[typ.String()] = typ
	}
	bodies := map[string]bool{"none": true, "VerificationKeyRequest or empty": true, "DSRequest": true,
		"DSRequest then content (streamed)": true, "ProviderRequest": true}
	row := regexp.MustCompile("^\\| `(/[a-z_./-]+)` \\| ([A-Z, ]+) \\| ([^|]+) \\| ([^|]+) \\| ([a-z ]+) \\| ([a-z_]+) \\|$")
	dsSeen := map[RequestType]string{}
	providerSeen := map[ProviderRequestType]string{}
	for _, line := range strings.Split(table, "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("endpoint table row does not parse: %s", line)
			continue
		}
		path, body, types, auth := m[1], m[3], m[4], m[5]
		t.Run(path, func(t *testing.T) {
			if !bodies[body] {
				t.Errorf("body %q is not in the vocabulary", body)
			}
			wantAuth := "none"
			switch body {
			case "DSRequest", "DSRequest then content (streamed)":
				wantAuth = "client signature"
			case "ProviderRequest":
				wantAuth = "provider signature"
			}
			if auth != wantAuth {
				t.Errorf("authentication %q, want %q for body %s", auth, wantAuth, body)
			}
			if types == "-" {
				if wantAuth != "none" {
					t.Errorf("an endpoint taking %s lists no request type", body)
				}
				return
			}
			for _, name := range strings.Split(types, ", ") {
				if typ, ok := dsNames[name]; ok && wantAuth == "client signature" {
					if typ.ProviderOnly() {
						t.Errorf("provider-only type %s listed", name)
					}
					if prev, dup := dsSeen[typ]; dup {
						t.Errorf("%s also listed on %s", name, prev)
					}
					dsSeen[typ] = path
				} else if typ, ok := providerNames[name]; ok && wantAuth == "provider signature" {
					if prev, dup := providerSeen[typ]; dup {
						t.Errorf("%s also listed on %s", name, prev)
					}
					providerSeen[typ] = path
					if path != "/"+name {
						t.Errorf("provider type %s is on %s, not /%s", name, path, name)
					}
				} else {
					t.Errorf("%q is not a request type name this body carries", name)
				}
			}
		})
	}
	for typ := RequestType(0); typ.Known(); typ++ {
		if _, ok := dsSeen[typ]; !ok && !typ.ProviderOnly() {
			t.Errorf("DS request type %s is on no endpoint", typ)
		}
	}
	for typ := ProviderRequestType(0); typ <= maxProviderRequestType; typ++ {
		if _, ok := providerSeen[typ]; !ok {
			t.Errorf("provider request type %s is on no endpoint", typ)
		}
	}
}
