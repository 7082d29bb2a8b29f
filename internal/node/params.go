package node

import (
	"strconv"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

func intParam(s, name string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, apperr.Invalid(name, "query parameter "+name+" must be a non-negative integer", "查询参数 "+name+" 须为非负整数")
	}
	return v, nil
}

func timeParam(s, name string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.UTC); err == nil {
		return t, nil
	}
	return time.Time{}, apperr.Invalid(name, "query parameter "+name+" must be a date (2006-01-02) or RFC 3339 time", "查询参数 "+name+" 须为日期（2006-01-02）或 RFC 3339 时间")
}
