package catalog

// The seed: the 13 service items of 《郑州市居民服务一卡通规定》 in the
// regulation's order, and the scenarios every node starts with. Open inserts
// whatever is missing and never overwrites what is there. To add a seeded
// scenario in a later version, append it to its item below; existing nodes
// get it on their next start. docs/service-items.md is generated from this
// (go generate ./internal/catalog).

//go:generate go test -run TestServiceItemsDoc -update-docs .

var seedItems = []Item{
	{1, "社会保障", "Social security",
		"养老、医疗、工伤、失业、生育保险", "Pension, medical, work-injury, unemployment and maternity insurance"},
	{2, "人力资源", "Human resources",
		"就业创业、人事人才、劳动关系", "Employment and entrepreneurship, personnel and talent, labour relations"},
	{3, "医疗服务", "Medical services",
		"医院服务、居民健康服务、医保个人账户结算、异地就医直接结算", "Hospital services, resident health services, settlement from the medical personal account, direct settlement of bills incurred in another city"},
	{4, "惠民惠农补贴发放", "Benefit and farm subsidies",
		"惠民惠农财政补贴等政府补贴资金发放", "Paying out benefit, farm and other government subsidies"},
	{5, "身份凭证", "Proof of identity",
		"公共服务、住宿登记、考试报名等身份凭证", "Proof of identity for public services, hotel check-in registration and exam registration"},
	{6, "交通出行", "Public transport",
		"公交、无轨电车、轨道交通", "Bus, trolleybus and rail transit"},
	{7, "文化旅游", "Libraries, museums and scenic spots",
		"公共图书馆、国有博物馆、科技馆、旅游景区", "Public libraries, state museums, science museums and scenic spots"},
	{8, "智慧校园", "Campus",
		"考试管理、奖助学金、图书借阅、缴费、门禁、食堂", "Exam management, scholarships and grants, library loans, fees, gate entry and canteens"},
	{9, "生活缴费", "Bills, taxes and dues",
		"个人所得税、工会会费、罚没款、党费、水电气暖费用", "Income tax, union dues, fines, party dues, water, electricity, gas and heating bills"},
	{10, "金融服务", "Financial services",
		"住房公积金提取、现金、转账、消费、移动支付", "Housing provident fund withdrawal, cash, transfers, purchases and mobile payment"},
	{11, "机关企事业单位", "Employers",
		"门禁、工资发放、考勤、食堂", "Door access, salary payment, attendance and canteens of state organs, organisations and enterprises"},
	{12, "居住社区", "Residential communities",
		"门禁、停车、家政、物业缴费", "Door access, parking, housekeeping and property fees"},
	{13, "其他服务", "Other services",
		"后续增加的其他服务", "Other services added later"},
}

// View field sets used by the seed.
var (
	viewDecision   = []string{"decision", "reason"}
	viewFare       = []string{"decision", "reason", "charged_fen", "concession"}
	viewPayment    = []string{"decision", "reason", "charged_fen"}
	viewCanteen    = []string{"decision", "reason", "charged_fen", "balance_fen"}
	viewCounter    = []string{"decision", "reason", "name", "masked_id_number", "category", "card_status"}
	viewMaskedName = []string{"decision", "reason", "masked_name", "card_status"}
	viewPayout     = []string{"decision", "reason", "payout_fen", "masked_name"}
)

// Concession sets used by the seed.
var (
	transitConcessions = []Concession{
		{ID: "senior_65_free", NameZh: "65周岁及以上老人免费", NameEn: "Free for 65 and over", MinAge: 65, PayPercent: 0},
		{ID: "senior_60_half", NameZh: "60至64周岁老人半价", NameEn: "Half fare for 60 to 64", MinAge: 60, MaxAge: 64, PayPercent: 50},
		{ID: "disabled_free", NameZh: "残疾人免费", NameEn: "Free for disabled holders", AnyFlag: []string{"disabled"}, PayPercent: 0},
		{ID: "student_half", NameZh: "学生半价", NameEn: "Half fare for students", AnyFlag: []string{"student"}, PayPercent: 50},
	}
	scenicConcessions = []Concession{
		{ID: "senior_70_free", NameZh: "70周岁及以上老人免票", NameEn: "Free for 70 and over", MinAge: 70, PayPercent: 0},
		{ID: "senior_60_half", NameZh: "60至69周岁老人半价", NameEn: "Half price for 60 to 69", MinAge: 60, MaxAge: 69, PayPercent: 50},
		{ID: "child_free", NameZh: "6周岁及以下儿童免票", NameEn: "Free for children aged 6 and under", MinAge: 0, MaxAge: 6, PayPercent: 0},
		{ID: "student_half", NameZh: "学生半价", NameEn: "Half price for students", AnyFlag: []string{"student"}, PayPercent: 50},
		{ID: "disabled_free", NameZh: "残疾人免票", NameEn: "Free for disabled holders", AnyFlag: []string{"disabled"}, PayPercent: 0},
		{ID: "veteran_free", NameZh: "现役军人及退役军人免票", NameEn: "Free for service members and veterans", AnyFlag: []string{"veteran"}, PayPercent: 0},
	}
)

func identify(id string, item int, zh, en string, view []string) Scenario {
	return Scenario{ID: id, Item: item, NameZh: zh, NameEn: en, Kind: KindIdentify, ViewFields: view, Enabled: true}
}

func access(id string, item int, zh, en string) Scenario {
	return Scenario{ID: id, Item: item, NameZh: zh, NameEn: en, Kind: KindAccess, ViewFields: viewDecision, OfflineAllowed: true, Enabled: true}
}

// charge with an amount from the terminal.
func charge(id string, item int, zh, en string, view []string) Scenario {
	return Scenario{ID: id, Item: item, NameZh: zh, NameEn: en, Kind: KindCharge, AmountFromTerminal: true, ViewFields: view, Enabled: true}
}

// fare is a fixed-amount charge.
func fare(id string, item int, zh, en string, fen int64, cs []Concession) Scenario {
	return Scenario{ID: id, Item: item, NameZh: zh, NameEn: en, Kind: KindCharge, DefaultAmountFen: fen, Concessions: cs, ViewFields: viewFare, Enabled: true}
}

func payout(id string, item int, zh, en string) Scenario {
	return Scenario{ID: id, Item: item, NameZh: zh, NameEn: en, Kind: KindPayout, AmountFromTerminal: true, ViewFields: viewPayout, LocalOnly: true, Enabled: true}
}

// pin asks for the PIN above fen.
func pin(s Scenario, fen int64) Scenario { s.RequirePIN, s.PINAboveFen = true, fen; return s }

func offline(s Scenario) Scenario { s.OfflineAllowed = true; return s }

func credit(s Scenario, fen int64) Scenario { s.CreditLimitFen = fen; return s }

func maxAmount(s Scenario, fen int64) Scenario { s.MaxAmountFen = fen; return s }

func needFlag(s Scenario, flags ...string) Scenario { s.Eligibility.RequireAnyFlag = flags; return s }

func categories(s Scenario, cs ...string) Scenario { s.Eligibility.Categories = cs; return s }

func localOnly(s Scenario) Scenario { s.LocalOnly = true; return s }

// The PIN threshold for everyday payments: above 200 yuan.
const everydayPIN = 20_000

func seedScenarios() []Scenario {
	medicalOutpatient := Scenario{ID: "medical.outpatient", Item: 3,
		NameZh: "门诊结算（含异地就医直接结算）", NameEn: "Outpatient settlement (including bills incurred in another city)",
		Kind: KindMedical, AmountFromTerminal: true,
		ViewFields: []string{"decision", "reason", "charged_fen", "medical_paid_fen", "wallet_paid_fen", "name", "masked_id_number", "category", "home_city"},
		Enabled:    true}
	pharmacy := Scenario{ID: "medical.pharmacy", Item: 3,
		NameZh: "定点药店购药", NameEn: "Designated pharmacy purchase",
		Kind: KindMedical, AmountFromTerminal: true, MaxAmountFen: 500_000,
		ViewFields: []string{"decision", "reason", "charged_fen", "medical_paid_fen", "wallet_paid_fen", "masked_name"},
		Enabled:    true}
	metroExit := offline(credit(maxAmount(charge("transit.metro_exit", 6, "轨道交通出站扣费", "Metro exit (distance fare)", viewFare), 2_000), 500))
	metroExit.Concessions = transitConcessions
	return []Scenario{
		// 1 social security
		identify("social.pension_counter", 1, "养老保险经办窗口", "Pension insurance counter", viewCounter),
		identify("social.insurance_counter", 1, "社会保险经办窗口（医疗、工伤、失业、生育）", "Social insurance counter (medical, work injury, unemployment, maternity)", viewCounter),
		// 2 human resources
		identify("hr.employment_service", 2, "就业创业服务窗口", "Employment and entrepreneurship service counter", viewCounter),
		identify("hr.talent_service", 2, "人事人才服务窗口", "Personnel and talent service counter", viewCounter),
		identify("hr.labour_relations", 2, "劳动关系（劳动保障监察、仲裁）窗口", "Labour relations counter (inspection, arbitration)", viewCounter),
		// 3 medical
		identify("medical.registration", 3, "医院挂号", "Hospital registration",
			[]string{"decision", "reason", "name", "masked_id_number", "category", "age_band", "card_status", "home_city"}),
		pin(medicalOutpatient, everydayPIN),
		pin(pharmacy, everydayPIN),
		identify("medical.health_service", 3, "居民健康服务（家庭医生签约、健康档案）", "Resident health services (family doctor, health record)",
			[]string{"decision", "reason", "name", "masked_id_number", "age_band"}),
		// 4 subsidies
		payout("subsidy.benefit", 4, "惠民补贴发放", "Benefit subsidy payout"),
		categories(payout("subsidy.farm", 4, "惠农补贴发放", "Farm subsidy payout"), CategoryLocal),
		payout("subsidy.other", 4, "其他政府补贴发放", "Other government subsidy payout"),
		// 5 proof of identity
		identify("identity.hotel_checkin", 5, "住宿登记", "Hotel check-in registration",
			[]string{"decision", "reason", "name", "masked_id_number", "category"}),
		identify("identity.exam_registration", 5, "考试报名", "Exam registration",
			[]string{"decision", "reason", "name", "masked_id_number", "category", "photo_ref"}),
		identify("identity.public_service", 5, "公共服务身份核验", "Identity check for public services",
			[]string{"decision", "reason", "masked_name", "masked_id_number", "category"}),
		// 6 public transport
		offline(credit(fare("transit.bus", 6, "公交乘车", "Bus fare", 200, transitConcessions), 500)),
		offline(credit(fare("transit.trolleybus", 6, "无轨电车乘车", "Trolleybus fare", 100, transitConcessions), 500)),
		access("transit.metro_entry", 6, "轨道交通进站", "Metro entry"),
		metroExit,
		// 7 libraries, museums, scenic spots
		identify("library.loan", 7, "公共图书馆借阅", "Public library loan", viewMaskedName),
		access("museum.entry", 7, "国有博物馆入馆（免费）", "State museum entry (free)"),
		access("museum.science_entry", 7, "科技馆入馆", "Science museum entry"),
		pin(fare("scenic.ticket", 7, "旅游景区门票", "Scenic spot ticket", 6_000, scenicConcessions), everydayPIN),
		// 8 campus
		needFlag(access("campus.gate", 8, "校园门禁", "Campus gate"), "student", "teacher"),
		offline(pin(maxAmount(charge("campus.canteen", 8, "校园食堂", "Campus canteen", viewCanteen), 10_000), 5_000)),
		pin(needFlag(charge("campus.fees", 8, "学杂费缴纳", "Tuition and fees", []string{"decision", "reason", "charged_fen", "name"}), "student"), 0),
		needFlag(identify("campus.library_loan", 8, "校园图书借阅", "Campus library loan", viewMaskedName), "student", "teacher"),
		identify("campus.exam", 8, "考场身份核验", "Exam hall identity check",
			[]string{"decision", "reason", "name", "masked_id_number", "photo_ref"}),
		needFlag(payout("campus.scholarship", 8, "奖助学金发放", "Scholarship and grant payout"), "student"),
		// 9 bills, taxes, dues
		pin(charge("bills.water", 9, "水费", "Water bill", viewPayment), everydayPIN),
		pin(charge("bills.electricity", 9, "电费", "Electricity bill", viewPayment), everydayPIN),
		pin(charge("bills.gas", 9, "燃气费", "Gas bill", viewPayment), everydayPIN),
		pin(charge("bills.heating", 9, "暖气费", "Heating bill", viewPayment), everydayPIN),
		pin(charge("bills.fine", 9, "罚没款缴纳", "Fine payment", []string{"decision", "reason", "charged_fen", "masked_name", "masked_id_number"}), 0),
		pin(charge("bills.union_dues", 9, "工会会费", "Union dues", viewPayment), everydayPIN),
		pin(charge("bills.party_dues", 9, "党费", "Party dues", viewPayment), everydayPIN),
		pin(charge("bills.income_tax", 9, "个人所得税", "Personal income tax", []string{"decision", "reason", "charged_fen", "name", "masked_id_number"}), 0),
		// 10 financial services
		pin(charge("finance.purchase", 10, "消费支付", "Purchase", viewPayment), everydayPIN),
		pin(charge("finance.cash_withdrawal", 10, "取现", "Cash withdrawal", viewPayment), 0),
		payout("finance.provident_withdrawal", 10, "住房公积金提取", "Housing provident fund withdrawal"),
		// 11 employers
		access("employer.door", 11, "单位门禁", "Workplace door"),
		identify("employer.attendance", 11, "考勤打卡", "Attendance", viewMaskedName),
		offline(pin(maxAmount(charge("employer.canteen", 11, "单位食堂", "Workplace canteen", viewCanteen), 10_000), 5_000)),
		payout("employer.salary", 11, "工资发放", "Salary payment"),
		// 12 residential communities
		access("community.door", 12, "小区门禁", "Community door"),
		pin(charge("community.parking", 12, "停车缴费", "Parking fee", viewPayment), everydayPIN),
		pin(charge("community.property_fee", 12, "物业费", "Property fee", []string{"decision", "reason", "charged_fen", "masked_name"}), everydayPIN),
		pin(charge("community.housekeeping", 12, "家政服务", "Housekeeping service", viewPayment), everydayPIN),
		// 13 other services: none yet; staff add them.
	}
}

// SeedItems returns the 13 service items as seeded.
func SeedItems() []Item { return append([]Item(nil), seedItems...) }

// SeedScenarios returns the seeded scenarios in order (deep copies).
func SeedScenarios() []Scenario {
	ss := seedScenarios()
	for i := range ss {
		ss[i] = ss[i].Clone()
		ss[i].Seeded = true
	}
	return ss
}
