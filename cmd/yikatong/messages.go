package main

import "fmt"

// notEmptyTarget refuses a restore into where data already is (a data
// directory, or a PostgreSQL database; what adds what is there): the
// backup would be mixed with it.
func notEmptyTarget(where, what string) error {
	return fmt.Errorf("%s is not empty%s: restore only into a new data directory and an empty database (%s 不是空的：只能恢复到新的数据目录和空数据库)", where, what, where)
}
