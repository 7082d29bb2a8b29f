package catalog

// FieldInfo describes one view field a scenario may declare.
type FieldInfo struct {
	Name          string `json:"name"`
	DescriptionEn string `json:"description_en"`
	DescriptionZh string `json:"description_zh"`
}

// fields is the closed vocabulary of what a provider may ever see. There is
// deliberately no field for a full ID number, a birth date, an address or a
// phone number: adding one is a code change reviewed as such.
var fields = []FieldInfo{
	{"decision", "accepted or declined", "受理结果（通过/拒绝）"},
	{"reason", "why a scan was declined (an error code)", "拒绝原因（错误码）"},
	{"charged_fen", "amount charged, in fen", "扣款金额（分）"},
	{"payout_fen", "amount paid out, in fen", "发放金额（分）"},
	{"medical_paid_fen", "part of a medical bill paid from the medical personal account", "医保个人账户支付金额（分）"},
	{"wallet_paid_fen", "part of a medical bill paid from the wallet", "钱包支付金额（分）"},
	{"concession", "concession applied (e.g. senior_65_free)", "所享优惠"},
	{"masked_name", "name with all but one character masked (张*)", "脱敏姓名（张*）"},
	{"name", "full name", "姓名"},
	{"masked_id_number", "ID number with the middle masked (4101**********123X)", "脱敏证件号码"},
	{"category", "holder category (local, insured_nonlocal, permanent_resident)", "持卡人类别"},
	{"age_band", "age band (0-13, 14-17, 18-59, 60-64, 65-69, 70+)", "年龄段"},
	{"card_status", "card status", "卡片状态"},
	{"balance_fen", "wallet balance after the scan, in fen", "钱包余额（分）"},
	{"medical_balance_fen", "medical personal account balance after the scan, in fen", "医保个人账户余额（分）"},
	{"photo_ref", "reference to the holder's photo for visual comparison", "持卡人照片引用（用于人证比对）"},
	{"home_city", "city that issued the card or code", "发卡城市"},
}

var fieldSet = func() map[string]bool {
	m := make(map[string]bool, len(fields))
	for _, f := range fields {
		m[f.Name] = true
	}
	return m
}()

// Fields returns the vocabulary of view fields, in a stable order.
func Fields() []FieldInfo {
	out := make([]FieldInfo, len(fields))
	copy(out, fields)
	return out
}

// IsField reports whether name is a view field a scenario may declare.
func IsField(name string) bool { return fieldSet[name] }

// View returns the part of all that the provider of scenario s may see: the
// keys that s declares and that are in the vocabulary. Everything else —
// including any key a caller put in all by mistake — is dropped.
func View(s Scenario, all map[string]any) map[string]any {
	out := make(map[string]any, len(s.ViewFields))
	for _, f := range s.ViewFields {
		if !fieldSet[f] {
			continue
		}
		if v, ok := all[f]; ok {
			out[f] = v
		}
	}
	return out
}
