package moh

import "testing"

func TestValidFQDN(t *testing.T) {
	for name, want := range map[string]bool{
		"example.com": true, "ds.a-b.example": true, "localhost": true, "xn--bcher-kva.example": true,
		"": false, "Example.com": false, "example.com.": false, "-a.example": false, "a-.example": false,
		"a..b": false, "1.2.3.4": false, "a.123": false, "[::1]": false, "a_b.example": false,
		"exa mple.com": false, "example.com:443": false,
	} {
		if got := ValidFQDN([]byte(name)); got != want {
			t.Errorf("ValidFQDN(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseURIs(t *testing.T) {
	p, u, err := ParseUserURI([]byte(UserURI("b.example", "bob")))
	if err != nil || string(p) != "b.example" || string(u) != "bob" {
		t.Fatalf("ParseUserURI = %s %s %v", p, u, err)
	}
	p, u, d, err := ParseClientURI([]byte(ClientURI("b.example", "bob", "phone-1")))
	if err != nil || string(p) != "b.example" || string(u) != "bob" || string(d) != "phone-1" {
		t.Fatalf("ParseClientURI = %s %s %s %v", p, u, d, err)
	}
	for _, bad := range []string{
		"mimi://b.example/u/", "mimi://b.example/u/Bob", "mimi://b.example/d/bob", "https://b.example/u/bob",
		"mimi://B.example/u/bob", "mimi://b.example/u/bob/x", "mimi://b.example", "mimi:///u/bob",
	} {
		if _, _, err := ParseUserURI([]byte(bad)); err == nil {
			t.Errorf("ParseUserURI(%q) accepted", bad)
		}
	}
	if _, _, _, err := ParseClientURI([]byte("mimi://b.example/u/bob")); err == nil {
		t.Error("ParseClientURI accepted a user URI")
	}
}
