package catalog

import (
	"bytes"
	"fmt"
	"strings"
)

// Markdown renders items and their scenarios as a bilingual Markdown
// document (docs/service-items.md is this, rendered from the seed).
func Markdown(items []Item, scenarios []Scenario) []byte {
	var b bytes.Buffer
	b.WriteString("# Service items and scenarios · 服务事项与应用场景\n\n")
	b.WriteString("<!-- Generated from internal/catalog/seed.go by `go generate ./internal/catalog`. Do not edit by hand: a test fails when this file is out of date. -->\n\n")
	b.WriteString("The 13 service items of 《郑州市居民服务一卡通规定》, in the regulation's order, and the scenarios every node is seeded with. ")
	b.WriteString("Staff (`hr_admin`) can change fares, rules, concessions and visible fields, disable a scenario or add new ones without a release; ")
	b.WriteString("this page shows the seed, not a node's current configuration.\n\n")
	b.WriteString("Kinds: `identify` proves who the holder is; `access` opens a door or gate; `charge` takes money from the wallet; ")
	b.WriteString("`medical` settles a bill from the medical personal account first, then the wallet; `payout` pays into the wallet. ")
	b.WriteString("Amounts are in fen (分; 100 fen = ¥1). A card that is not active is always refused. ")
	b.WriteString("No scenario can show a full ID number: the field does not exist.\n\n")

	b.WriteString("| # | 服务事项 | Service item | Scenarios |\n|---|---|---|---|\n")
	count := map[int]int{}
	for _, s := range scenarios {
		count[s.Item]++
	}
	for _, it := range items {
		fmt.Fprintf(&b, "| %d | %s | %s | %d |\n", it.Number, it.NameZh, it.NameEn, count[it.Number])
	}
	b.WriteString("\n")

	for _, it := range items {
		fmt.Fprintf(&b, "## %d. %s · %s\n\n%s  \n%s\n\n", it.Number, it.NameZh, it.NameEn, it.DescriptionZh, it.DescriptionEn)
		var rows []Scenario
		for _, s := range scenarios {
			if s.Item == it.Number {
				rows = append(rows, s)
			}
		}
		if len(rows) == 0 {
			b.WriteString("No seeded scenarios; staff add them as services join. 暂无预置场景，由工作人员按需新增。\n\n")
			continue
		}
		b.WriteString("| id | 名称 | Name | kind | amount | who | concessions | terminal | visible fields |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range rows {
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				s.ID, cell(s.NameZh), cell(s.NameEn), s.Kind, amountText(s), whoText(s), concessionsText(s), terminalText(s),
				"`"+strings.Join(s.ViewFields, "`, `")+"`")
		}
		b.WriteString("\n")
	}

	b.WriteString("## Visible fields · 可见字段\n\n| field | meaning | 含义 |\n|---|---|---|\n")
	for _, f := range fields {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Name, cell(f.DescriptionEn), cell(f.DescriptionZh))
	}
	return b.Bytes()
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func yuan(fen int64) string { return fmt.Sprintf("%d fen (¥%d.%02d)", fen, fen/100, fen%100) }

func amountText(s Scenario) string {
	switch {
	case !s.Moves():
		return "—"
	case s.AmountFromTerminal && s.MaxAmountFen > 0:
		return "from terminal, max " + yuan(s.MaxAmountFen)
	case s.AmountFromTerminal:
		return "from terminal"
	default:
		return yuan(s.DefaultAmountFen)
	}
}

func whoText(s Scenario) string {
	var parts []string
	if len(s.Eligibility.Categories) > 0 {
		parts = append(parts, strings.Join(s.Eligibility.Categories, ", ")+" only")
	}
	if s.LocalOnly {
		parts = append(parts, "cards of this city only")
	}
	if s.Eligibility.MinAge > 0 {
		parts = append(parts, fmt.Sprintf("age ≥ %d", s.Eligibility.MinAge))
	}
	if s.Eligibility.MaxAge > 0 {
		parts = append(parts, fmt.Sprintf("age ≤ %d", s.Eligibility.MaxAge))
	}
	if len(s.Eligibility.RequireAnyFlag) > 0 {
		parts = append(parts, "flag: "+strings.Join(s.Eligibility.RequireAnyFlag, " or "))
	}
	if len(parts) == 0 {
		return "all holders"
	}
	return strings.Join(parts, "; ")
}

func concessionsText(s Scenario) string {
	if len(s.Concessions) == 0 {
		return "—"
	}
	var parts []string
	for _, c := range s.Concessions {
		pay := "free"
		if c.PayPercent > 0 {
			pay = fmt.Sprintf("pay %d%%", c.PayPercent)
		}
		parts = append(parts, fmt.Sprintf("%s (%s): %s", cell(c.NameZh), cell(c.NameEn), pay))
	}
	return strings.Join(parts, "<br>")
}

func terminalText(s Scenario) string {
	var parts []string
	if s.OfflineAllowed {
		parts = append(parts, "offline allowed")
	}
	if s.CreditLimitFen > 0 {
		parts = append(parts, "ride first, pay later up to "+yuan(s.CreditLimitFen))
	}
	if s.RequirePIN {
		if s.PINAboveFen == 0 {
			parts = append(parts, "PIN always")
		} else {
			parts = append(parts, "PIN above "+yuan(s.PINAboveFen))
		}
	}
	if !s.Enabled {
		parts = append(parts, "disabled")
	}
	if len(parts) == 0 {
		return "online"
	}
	return strings.Join(parts, "; ")
}
