//go:build !unix

package sqlitestore

// lockFile takes no lock where flock(2) does not exist: exclusive is false,
// and the Store reads every replay lookup from the database instead of
// trusting an in-memory filter that another Store's writes would outdate.
func lockFile(string) (unlock func() error, exclusive bool, err error) {
	return func() error { return nil }, false, nil
}
