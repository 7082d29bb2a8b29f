package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestCmdIDCheck(t *testing.T) {
	cases := []struct {
		args []string
		code int
		out  string
		err  bool
	}{
		{[]string{"check", "11010519491231002X"}, 0, `{"valid":true,"kind":"citizen","region":"110105","birth_date":"1949-12-31","sex":"F"}` + "\n", false},
		{[]string{"check", "11010519491231002x"}, 0, `{"valid":true,"kind":"citizen","region":"110105","birth_date":"1949-12-31","sex":"F"}` + "\n", false},
		{[]string{"check", "110105194912310021"}, 1, "", false},
		{[]string{"check"}, 2, "", true},
		{[]string{"verify", "11010519491231002X"}, 2, "", true},
		{nil, 2, "", true},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := cmdID(c.args, &out, &errb)
		if code != c.code {
			t.Errorf("%v: exit %d, want %d (stderr %q)", c.args, code, c.code, errb.String())
		}
		if c.out != "" && out.String() != c.out {
			t.Errorf("%v: stdout %q, want %q", c.args, out.String(), c.out)
		}
		if c.err != (errb.Len() > 0) {
			t.Errorf("%v: stderr %q", c.args, errb.String())
		}
		if c.code == 1 {
			var v struct {
				Valid bool
				Error struct {
					Code      string `json:"code"`
					Message   string `json:"message"`
					MessageZh string `json:"message_zh"`
				}
			}
			if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.Valid || v.Error.Code != "bad_check_digit" || v.Error.Message == "" || v.Error.MessageZh == "" {
				t.Errorf("%v: stdout %q (%v)", c.args, out.String(), err)
			}
		}
	}
}
