package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/yikatong/yikatong/internal/idnum"
)

const idUsage = `usage: yikatong id check NUMBER

Validates a citizen ID number (GB 11643-1999) or a foreign permanent
residence card number (2023: 18 characters starting with 9; 2017: 3 letters
and 12 digits) and prints one JSON object. Exit status: 0 valid, 1 invalid,
2 usage error.
`

// cmdID implements `yikatong id check NUMBER`; args are the words after "id".
func cmdID(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && isHelp(args[0]) || len(args) == 2 && args[0] == "check" && isHelp(args[1]) {
		fmt.Fprint(stdout, idUsage)
		return 0
	}
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprint(stderr, idUsage)
		return 2
	}
	res := idnum.CheckResult(args[1], time.Now())
	b, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintln(stderr, "yikatong id check:", err)
		return 2
	}
	fmt.Fprintf(stdout, "%s\n", b)
	if !res.Valid {
		return 1
	}
	return 0
}
