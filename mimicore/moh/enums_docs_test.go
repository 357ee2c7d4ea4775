package moh

import (
	"bytes"
	"encoding/hex"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// readProtocolDoc returns docs/protocol.md.
func readProtocolDoc(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}

// docEnums returns the values of every `enum { name(value), ... } Name;`
// of the document by enum name, the (max) entry left out.
func docEnums(t *testing.T, doc string) map[string]map[string]uint64 {
	t.Helper()
	enums := map[string]map[string]uint64{}
	value := regexp.MustCompile(`([a-z0-9_]+)\((0x[0-9a-f]+|[0-9]+)\)`)
	for _, m := range regexp.MustCompile(`(?s)enum \{([^}]*)\} ([A-Za-z]+);`).FindAllStringSubmatch(doc, -1) {
		values := map[string]uint64{}
		for _, v := range value.FindAllStringSubmatch(m[1], -1) {
			n, err := strconv.ParseUint(v[2], 0, 16)
			if err != nil {
				t.Fatalf("enum %s: value %s: %v", m[2], v[0], err)
			}
			if _, dup := values[v[1]]; dup {
				t.Errorf("enum %s names %s twice", m[2], v[1])
			}
			values[v[1]] = n
		}
		enums[m[2]] = values
	}
	return enums
}

// TestEnumsMatchDocs requires every enumeration of docs/protocol.md (the
// request, response, authentication and queueing types, the signature
// schemes) to give each name the value the code uses, and to list all of
// them, so that a peer coding from the document sends the same numbers.
func TestEnumsMatchDocs(t *testing.T) {
	doc := readProtocolDoc(t)
	enums := docEnums(t, doc)

	want := map[string]map[string]uint64{
		"ProviderRequestType": {},
		"DSRequestType":       {},
		"DSAuthType": {"anonymous": uint64(AuthAnonymous), "client_signature": uint64(AuthClientSignature),
			"key_package_signature": uint64(AuthKeyPackageSignature)},
		"QueueingStatus": {"ok": uint64(QueueingOK),
			"invalid_client_queue_information": uint64(QueueingInvalidClientQueueInfo)},
		"SignatureScheme": {"ed25519": uint64(SchemeEd25519),
			"ecdsa_secp256r1_sha256": uint64(SchemeECDSAP256SHA256)},
	}
	for typ := ProviderRequestType(0); typ <= maxProviderRequestType; typ++ {
		want["ProviderRequestType"][typ.String()] = uint64(typ)
	}
	for typ := RequestType(0); typ.Known(); typ++ {
		want["DSRequestType"][typ.String()] = uint64(typ)
	}
	if len(want["DSAuthType"]) != int(maxAuthType)+1 || len(want["QueueingStatus"]) != int(maxQueueingStatus)+1 {
		t.Fatal("the test's tables miss a value the code defines")
	}

	// DSResponseType is written as the cases of DSResponse's select (§3).
	responses := map[string]uint64{}
	_, sel, ok := strings.Cut(doc, "  DSResponseType type;")
	if !ok {
		t.Fatal("docs/protocol.md has no DSResponse with a DSResponseType")
	}
	sel, _, _ = strings.Cut(sel, "} DSResponse;")
	for _, m := range regexp.MustCompile(`case ([a-z_]+)\(([0-9]+)\):`).FindAllStringSubmatch(sel, -1) {
		n, _ := strconv.ParseUint(m[2], 10, 8)
		responses[m[1]] = n
	}
	enums["DSResponseType"] = responses
	want["DSResponseType"] = map[string]uint64{
		"ok": uint64(ResponseOK), "error": uint64(ResponseError), "group_id": uint64(ResponseGroupID),
		"welcome_info": uint64(ResponseWelcomeInfo), "external_commit_info": uint64(ResponseExternalCommitInfo),
		"verification_keys": uint64(ResponseVerificationKeys), "key_packages": uint64(ResponseKeyPackages),
		"attachment_token": uint64(ResponseAttachmentToken), "attachment_content": uint64(ResponseAttachmentContent),
		"queueing": uint64(ResponseQueueing),
	}

	for name, values := range want {
		t.Run(name, func(t *testing.T) {
			got, ok := enums[name]
			if !ok {
				t.Fatalf("docs/protocol.md defines no enum %s", name)
			}
			for n, v := range values {
				if d, ok := got[n]; !ok {
					t.Errorf("%s(%d) is not in the document", n, v)
				} else if d != v {
					t.Errorf("the document says %s(%d), the code %d", n, d, v)
				}
			}
			for n, d := range got {
				if _, ok := values[n]; !ok {
					t.Errorf("the document lists %s(%d), which the code does not have", n, d)
				}
			}
		})
	}
}

// TestRequestTypeTableMatchesDocs requires the first two columns of the
// request type table of docs/protocol.md §5.3 to name every DS request
// type with its number, once.
func TestRequestTypeTableMatchesDocs(t *testing.T) {
	doc := readProtocolDoc(t)
	const header = "| type | name | body | limits | accepted `auth_type` | endpoint |"
	_, table, ok := strings.Cut(doc, header+"\n")
	if !ok {
		t.Fatalf("docs/protocol.md has no table headed %q", header)
	}
	table, _, _ = strings.Cut(table, "\n\n")
	seen := map[RequestType]bool{}
	row := regexp.MustCompile(`^\| ([0-9, -]+) \| ([a-z_, ]+) \|`)
	for _, line := range strings.Split(table, "\n")[1:] {
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("row does not parse: %s", line)
			continue
		}
		var numbers []RequestType
		for _, part := range strings.Split(m[1], ", ") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil || b < a {
				t.Fatalf("row %q: bad type %q", line, part)
			}
			for n := a; n <= b; n++ {
				numbers = append(numbers, RequestType(n))
			}
		}
		names := strings.Split(m[2], ", ")
		if len(names) != len(numbers) {
			t.Errorf("row %q names %d types for %d numbers", line, len(names), len(numbers))
			continue
		}
		for i, typ := range numbers {
			if !typ.Known() || typ.String() != names[i] {
				t.Errorf("the table says %d is %s, the code %s", typ, names[i], typ)
			}
			if seen[typ] {
				t.Errorf("type %d is in two rows", typ)
			}
			seen[typ] = true
		}
	}
	for typ := RequestType(0); typ.Known(); typ++ {
		if !seen[typ] {
			t.Errorf("type %d (%s) is not in the table", typ, typ)
		}
	}
}

// TestUnknownEnumValuesRefused checks §1's rule that an enum value beyond
// the last one defined is a decode error, for every enum of the wire.
func TestUnknownEnumValuesRefused(t *testing.T) {
	pr, err := wire.Marshal(&ProviderRequest{RequestType: maxProviderRequestType + 1, Sender: []byte("a.example"),
		Recipient: []byte("b.example"), RequestID: []byte{1}, KeyID: []byte{2}, Payload: []byte{3}, Signature: []byte{4}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		v    wire.Unmarshaler
	}{
		{"ProviderRequestType", pr, new(ProviderRequest)},
		{"DSRequestType", []byte{0, 1, byte(maxRequestType) + 1, 0}, new(DSRequest)},
		{"DSAuthType", []byte{0, 1, byte(RequestGroupID), byte(maxAuthType) + 1}, new(DSRequest)},
		{"DSResponseType", []byte{0, 1, byte(ResponseQueueing) + 1}, new(DSResponse)},
		{"QueueingStatus", []byte{0, 1, byte(ResponseQueueing), byte(maxQueueingStatus) + 1, 0}, new(DSResponse)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := cryptobyte.String(tc.raw)
			if tc.v.UnmarshalWire(&s) {
				t.Errorf("%x decodes", tc.raw)
			}
		})
	}
}

// TestEncodingExamplesMatchDocs recomputes the small examples of
// docs/protocol.md §1, §3 and §5.5: the varints, the error answer and the
// request_group_id exchange.
func TestEncodingExamplesMatchDocs(t *testing.T) {
	doc := strings.Join(strings.Fields(readProtocolDoc(t)), " ") // lines wrap anywhere
	mustSay := func(t *testing.T, s string) {
		t.Helper()
		if !strings.Contains(doc, s) {
			t.Fatalf("docs/protocol.md does not say %q", s)
		}
	}
	t.Run("varints", func(t *testing.T) {
		mustSay(t, "Examples: `25` = 37, `7bbd` = 15293, `9d7f3e7d` = 494878333.")
		for _, tc := range []struct {
			enc string
			v   uint64
		}{{"25", 37}, {"7bbd", 15293}, {"9d7f3e7d", 494878333}} {
			raw, _ := hex.DecodeString(tc.enc)
			s := cryptobyte.String(raw)
			var v uint64
			if !wire.ReadVarint(&s, &v) || v != tc.v || !s.Empty() {
				t.Errorf("%s decodes to %d, the document says %d", tc.enc, v, tc.v)
			}
			var b cryptobyte.Builder
			wire.AddVarint(&b, tc.v)
			if got := hex.EncodeToString(b.BytesOrPanic()); got != tc.enc {
				t.Errorf("%d encodes as %s, the document says %s", tc.v, got, tc.enc)
			}
		}
		mustSay(t, "(`4005`, 5 in two bytes, is refused)")
		s := cryptobyte.String([]byte{0x40, 0x05})
		var v uint64
		if wire.ReadVarint(&s, &v) {
			t.Error("4005 decodes")
		}
	})
	t.Run("error answer", func(t *testing.T) {
		mustSay(t, "Example: `000101000100` is an `error` answer with code 1 (`malformed`) and an empty message.")
		want, _ := hex.DecodeString("000101000100")
		if got := EncodeError(DSError{Code: CodeMalformed}); !bytes.Equal(got, want) {
			t.Errorf("the error answer is %x, the document says %x", got, want)
		}
		var r DSResponse
		if err := wire.Unmarshal(want, &r, "DSResponse"); err != nil || r.Type != ResponseError ||
			r.Error.Code != CodeMalformed || len(r.Error.Message) != 0 {
			t.Errorf("%x decodes to %+v, %v", want, r, err)
		}
	})
	t.Run("request_group_id", func(t *testing.T) {
		mustSay(t, "The whole `request_group_id` request is the four bytes `00010000`")
		mustSay(t, "its answer is `00010210` followed by the 16 bytes of the new group")
		req, err := wire.Marshal(&DSRequest{Body: RequestBody{Type: RequestGroupID}})
		if err != nil || hex.EncodeToString(req) != "00010000" {
			t.Errorf("request_group_id is %x (%v), the document says 00010000", req, err)
		}
		ans, err := wire.Marshal(&DSResponse{Type: ResponseGroupID, GroupID: make([]byte, 16)})
		if err != nil || !bytes.HasPrefix(ans, []byte{0, 1, 2, 0x10}) || len(ans) != 20 {
			t.Errorf("its answer is %x (%v), the document says 00010210 and 16 bytes", ans, err)
		}
	})
}
