package web

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Every action the node writes to the audit log has a label in both
// languages, so the console's audit page never shows a bare code: the
// calls of auth's Audit, AuditEach, audit and updateStaff with a literal
// action are read from the source of the whole module.
func TestEveryAuditActionHasALabel(t *testing.T) {
	argAt := map[string]int{"Audit": 2, "AuditEach": 2, "audit": 3, "updateStaff": 3}
	found := 0
	for _, root := range []string{"../../internal", "../../cmd"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				i, ok := argAt[sel.Sel.Name]
				if !ok || len(call.Args) <= i {
					return true
				}
				lit, ok := call.Args[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				action, _ := strconv.Unquote(lit.Value)
				found++
				if m, ok := messages["audit."+action]; !ok || m[0] == "" || m[1] == "" {
					t.Errorf("%s: audit action %q has no label (audit.%s in i18n.go)", path, action, action)
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if found < 30 {
		t.Fatalf("found only %d audit calls with a literal action", found)
	}
}
