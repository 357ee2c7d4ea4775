package caddymodule

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestCaddyfileSyntaxMatchesReadme pins the mimi directive's syntax in
// three places: README's Caddyfile block, the syntax in the doc comment of
// Gateway.UnmarshalCaddyfile (go doc's), and the options the parser's
// switch accepts, so that none of them lists an option the others lack.
func TestCaddyfileSyntaxMatchesReadme(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const open = "## Caddyfile\n\n```caddyfile\n"
	start := strings.Index(string(readme), open)
	if start < 0 {
		t.Fatalf("README.md has no %q", open)
	}
	documented := string(readme[start+len(open):])
	documented = documented[:strings.Index(documented, "\n```")]

	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "caddyfile.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var fn *ast.FuncDecl
	for _, d := range file.Decls {
		if f, ok := d.(*ast.FuncDecl); ok && f.Name.Name == "UnmarshalCaddyfile" {
			fn = f
		}
	}
	if fn == nil {
		t.Fatal("caddyfile.go has no UnmarshalCaddyfile")
	}
	var syntax []string
	in := false
	for _, line := range strings.Split(fn.Doc.Text(), "\n") {
		if strings.HasPrefix(line, "\tmimi [<matcher>] {") {
			in = true
		}
		if in {
			syntax = append(syntax, strings.TrimPrefix(line, "\t"))
			if line == "\t}" {
				break
			}
		}
	}

	t.Run("doc comment", func(t *testing.T) {
		if got := strings.Join(syntax, "\n"); got != documented {
			t.Fatalf("the syntax in UnmarshalCaddyfile's doc comment differs from README's:\n%s\nREADME:\n%s", got, documented)
		}
	})
	t.Run("parser", func(t *testing.T) {
		var readmeOpts []string
		for _, line := range strings.Split(documented, "\n") {
			if strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "\t\t") && line != "\t}" {
				if name := strings.Fields(line)[0]; !slices.Contains(readmeOpts, name) {
					readmeOpts = append(readmeOpts, name)
				}
			}
		}
		var parsed []string
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			sw, ok := n.(*ast.SwitchStmt)
			if !ok {
				return true
			}
			for _, c := range sw.Body.List {
				for _, e := range c.(*ast.CaseClause).List {
					if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, _ := strconv.Unquote(lit.Value)
						parsed = append(parsed, v)
					}
				}
			}
			return false // the options' switch only, not those nested in it
		})
		slices.Sort(readmeOpts)
		slices.Sort(parsed)
		if !slices.Equal(readmeOpts, parsed) {
			t.Fatalf("README documents the options %q, the parser accepts %q", readmeOpts, parsed)
		}
	})
}
