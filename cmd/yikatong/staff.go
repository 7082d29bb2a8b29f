package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"strings"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node"
)

func init() {
	register("staff", "staff accounts: yikatong staff add|list|disable|enable|password (a real city's first users)", cmdStaff)
}

const staffUsage = `usage: yikatong staff COMMAND [flags]

Staff accounts of the node whose data directory (and database) is given,
beside its running processes: a real city creates its first users here
(serve --demo makes only the demo city's). Every change is recorded in
the audit log with the administrator (operating-system user@host) as actor.

  add      --user NAME --role hr_admin|finance|operator|provider
           [--provider PROVIDER_ID] [--name DISPLAY] [--password-stdin]
           creates a user. Without --password-stdin a strong password is
           generated and printed on stdout, alone and only this once.
           A provider user needs --provider naming an existing provider;
           other roles have none.
  list     [--json]
           every user: name, display name, role, provider, status,
           created (never a password hash)
  disable  --user NAME
           the user cannot sign in, and every session of theirs ends (at
           once on this database; running node processes stop accepting
           the tokens within 2 s)
  enable   --user NAME
           the user can sign in again (old sessions stay ended); a sign-in
           lock of the name is cleared
  password --user NAME [--password-stdin]
           a new password (generated and printed on stdout, or read from
           stdin); ends the user's sessions and clears a sign-in lock

Every command takes --data DIR (default ./yikatong-data) and --db URL (the
node's database; default: SQLite in the data directory). The database must
be the node's, at this version's schema: start 'yikatong serve' on it first.
--password-stdin reads one line from a pipe or file, e.g.
  printf '%s\n' "$PW" | yikatong staff add --user wang --role hr_admin --password-stdin
Exit status: 0 done, 1 refused or failed, 2 usage error.
`

// cmdStaff implements `yikatong staff …`; args are the words after "staff".
func cmdStaff(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		io.WriteString(stderr, staffUsage)
		return 2
	}
	if isHelp(args[0]) {
		io.WriteString(stdout, staffUsage)
		return 0
	}
	switch args[0] {
	case "add":
		return staffAdd(args[1:], stdin, stdout, stderr)
	case "list":
		return staffList(args[1:], stdout, stderr)
	case "disable", "enable":
		return staffSetDisabled(args[0], args[1:], stdout, stderr)
	case "password":
		return staffPassword(args[1:], stdin, stdout, stderr)
	}
	fmt.Fprintf(stderr, "staff: unknown command %q\n\n%s", args[0], staffUsage)
	return 2
}

// staffFlags parses a staff command's flags; extra defines its own. It
// answers -h itself and reports usage errors itself (ok false: return
// exit).
func staffFlags(name string, args []string, stdout, stderr io.Writer, extra func(fs *flag.FlagSet)) (data, db *string, exit int, ok bool) {
	fs := flag.NewFlagSet("staff "+name, flag.ContinueOnError)
	data, db = adminFlags(fs)
	if extra != nil {
		extra(fs)
	}
	if exit, ok := parseFlags(fs, "yikatong staff "+name+" [flags] (yikatong staff help: every staff command)", args, stdout, stderr); !ok {
		return nil, nil, exit, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "staff %s: unexpected argument %q (flags go before it; see yikatong staff help)\n", name, fs.Arg(0))
		return nil, nil, 2, false
	}
	return data, db, 0, true
}

// withStaffNode opens the node for an administrative command and runs fn;
// it prints fn's error and returns the exit status.
func withStaffNode(name, data, db string, stderr io.Writer, fn func(ctx context.Context, n *node.Node, actor auth.Principal) error) int {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	n, err := openNodeForAdmin(ctx, data, db, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "staff %s: %v\n", name, err)
		return 1
	}
	defer n.Close()
	if err := fn(ctx, n, localAdmin()); err != nil {
		fmt.Fprintf(stderr, "staff %s: %s\n", name, staffErrText(err))
		return 1
	}
	return 0
}

// staffErrText says err in English and Chinese where it has both.
func staffErrText(err error) string {
	var ae *apperr.Error
	if !errors.As(err, &ae) || ae.Code == apperr.Internal || ae.Code == apperr.Unavailable {
		return err.Error() // with its cause
	}
	en, zh := ae.Text()
	return string(ae.Code) + ": " + en + " (" + zh + ")"
}

// localAdmin names the administrator running the command for the audit
// log: the operating-system user and host, and the user who ran sudo.
func localAdmin() auth.Principal {
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if name == "" {
		name = os.Getenv("USER")
	}
	if name == "" {
		name = "unknown"
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown-host"
	}
	who := name + "@" + host
	if su := os.Getenv("SUDO_USER"); su != "" && su != name {
		who += " (sudo by " + su + ")"
	}
	return auth.LocalAdmin(who)
}

// staffPasswordInput returns the password to set: from stdin with
// --password-stdin (one line; its newline is not part of it), else a
// generated one (generated true: the caller prints it).
func staffPasswordInput(fromStdin bool, stdin io.Reader) (pw string, generated bool, err error) {
	if !fromStdin {
		return auth.GeneratePassword(), true, nil
	}
	if f, ok := stdin.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			return "", false, errors.New("--password-stdin reads the password from a pipe or a file, not from a terminal (it would be shown as typed): " +
				"printf '%s\\n' \"$PW\" | yikatong staff …, or leave --password-stdin out to have a strong one generated " +
				"(--password-stdin 从管道或文件读取密码，不从终端读取)")
		}
	}
	b, err := io.ReadAll(io.LimitReader(stdin, auth.MaxStaffPassword+3))
	if err != nil {
		return "", false, fmt.Errorf("reading the password from stdin: %w", err)
	}
	pw = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return "", false, errors.New("--password-stdin: stdin holds no password (标准输入中没有密码)")
	}
	if strings.ContainsAny(pw, "\r\n") {
		return "", false, errors.New("--password-stdin: the password is one line; stdin holds several (密码须为一行)")
	}
	return pw, false, auth.CheckStaffPassword(pw)
}

func staffAdd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var username, role, provider, display *string
	var pwStdin *bool
	data, db, exit, ok := staffFlags("add", args, stdout, stderr, func(fs *flag.FlagSet) {
		username = fs.String("user", "", "user name (sign-in name): 1-64 characters, no spaces")
		role = fs.String("role", "", "hr_admin, finance, operator or provider")
		provider = fs.String("provider", "", "the provider id of a provider user (GET /v1/providers lists them)")
		display = fs.String("name", "", "display name, e.g. the person's name (default: none)")
		pwStdin = fs.Bool("password-stdin", false, "read the password from stdin instead of generating one")
	})
	if !ok {
		return exit
	}
	if *username == "" || *role == "" {
		fmt.Fprintln(stderr, "staff add: give --user NAME and --role hr_admin|finance|operator|provider (yikatong staff help)")
		return 2
	}
	pw, generated, err := staffPasswordInput(*pwStdin, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "staff add: %s\n", staffErrText(err))
		return 1
	}
	return withStaffNode("add", *data, *db, stderr, func(ctx context.Context, n *node.Node, actor auth.Principal) error {
		u, err := n.Auth.AddStaff(ctx, actor, *username, *display, auth.Role(*role), pw, *provider)
		if err != nil {
			return err
		}
		if generated {
			fmt.Fprintln(stdout, pw)
		}
		of := ""
		if u.ProviderID != "" {
			of = " of provider " + u.ProviderID
		}
		fmt.Fprintf(stderr, "staff add: created %s (%s%s, id %s)%s\n", u.Username, u.Role, of, u.ID, passwordNote(generated, u.Username))
		return nil
	})
}

// passwordNote tells where the password went.
func passwordNote(generated bool, username string) string {
	if !generated {
		return " with the password from stdin"
	}
	return "; the password is on stdout, shown this once: hand it over in person " +
		"(another one: yikatong staff password --user " + username + "; 密码仅显示这一次)"
}

func staffList(args []string, stdout, stderr io.Writer) int {
	var asJSON *bool
	data, db, exit, ok := staffFlags("list", args, stdout, stderr, func(fs *flag.FlagSet) {
		asJSON = fs.Bool("json", false, "print a JSON array")
	})
	if !ok {
		return exit
	}
	return withStaffNode("list", *data, *db, stderr, func(ctx context.Context, n *node.Node, actor auth.Principal) error {
		list, err := n.Auth.ListStaff(ctx)
		if err != nil {
			return err
		}
		// Who looked at the staff list is recorded like any other read.
		if err := n.Auth.Audit(ctx, actor, "list_staff", "", fmt.Sprintf("users=%d", len(list))); err != nil {
			return err
		}
		if *asJSON {
			b, err := json.Marshal(list)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s\n", b)
			return nil
		}
		// Padded by display width: a Chinese display name takes two
		// columns a character.
		rows := [][]string{{"USER", "NAME", "ROLE", "PROVIDER", "STATUS", "CREATED", "ID"}}
		for _, u := range list {
			status := "active"
			if u.Disabled {
				status = "disabled"
			}
			rows = append(rows, []string{u.Username, dash(u.DisplayName), string(u.Role), dash(u.ProviderID), status, u.CreatedAt.Format(time.RFC3339), u.ID})
		}
		return writeTable(stdout, rows)
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func staffSetDisabled(cmd string, args []string, stdout, stderr io.Writer) int {
	var username *string
	data, db, exit, ok := staffFlags(cmd, args, stdout, stderr, func(fs *flag.FlagSet) {
		username = fs.String("user", "", "user name")
	})
	if !ok {
		return exit
	}
	if *username == "" {
		fmt.Fprintf(stderr, "staff %s: give --user NAME\n", cmd)
		return 2
	}
	return withStaffNode(cmd, *data, *db, stderr, func(ctx context.Context, n *node.Node, actor auth.Principal) error {
		if cmd == "enable" {
			u, err := n.Auth.EnableStaff(ctx, actor, *username)
			if err == nil {
				fmt.Fprintf(stderr, "staff enable: %s (%s) can sign in again; sessions ended before stay ended (%s 可以重新登录；此前结束的会话仍保持结束)\n", u.Username, u.Role, u.Username)
			}
			return err
		}
		u, err := n.Auth.DisableStaff(ctx, actor, *username)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "staff disable: %s (%s) is disabled and every session of theirs is revoked; running node processes stop accepting them within %v (%s 已停用，其所有会话均已撤销；运行中的节点进程在 %v 内不再接受这些会话)\n",
			u.Username, u.Role, n.Auth.CacheTTL, u.Username, n.Auth.CacheTTL)
		return nil
	})
}

func staffPassword(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var username *string
	var pwStdin *bool
	data, db, exit, ok := staffFlags("password", args, stdout, stderr, func(fs *flag.FlagSet) {
		username = fs.String("user", "", "user name")
		pwStdin = fs.Bool("password-stdin", false, "read the new password from stdin instead of generating one")
	})
	if !ok {
		return exit
	}
	if *username == "" {
		fmt.Fprintln(stderr, "staff password: give --user NAME")
		return 2
	}
	pw, generated, err := staffPasswordInput(*pwStdin, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "staff password: %s\n", staffErrText(err))
		return 1
	}
	return withStaffNode("password", *data, *db, stderr, func(ctx context.Context, n *node.Node, actor auth.Principal) error {
		u, err := n.Auth.SetStaffPassword(ctx, actor, *username, pw)
		if generated && u.ID != "" {
			// The new password is set even if revoking the old sessions
			// failed (run the command again to revoke them).
			fmt.Fprintln(stdout, pw)
		}
		if err != nil {
			return err
		}
		disabled, disabledZh := "", ""
		if u.Disabled {
			disabled = " (the user is disabled: yikatong staff enable --user " + u.Username + ")"
			disabledZh = "；该用户已停用，启用请运行 yikatong staff enable --user " + u.Username
		}
		fmt.Fprintf(stderr, "staff password: new password for %s%s; their sessions are revoked and a sign-in lock cleared%s (%s 的密码已重置，其会话均已撤销，登录锁定已解除%s)\n",
			u.Username, passwordNote(generated, u.Username), disabled, u.Username, disabledZh)
		return nil
	})
}
