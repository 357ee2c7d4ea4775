package ds

import "sync"

// DefaultMaxUploadsInProgress is how many uploads one uploader may have
// in progress at once on a gateway when Attachments.MaxUploadsInProgress
// is 0 (docs/protocol.md §6, upload step 4).
const DefaultMaxUploadsInProgress = 4

// UploadSlots counts the uploads each uploader (a client URI) has in
// progress, so that one uploader cannot hold more than a limit of them at
// once: each holds a goroutine, a file descriptor or a connection to the
// storage, a temporary file or a multipart upload, and its reservation of
// quota, for as long as its body keeps arriving (up to the upload
// deadline). The counts live in memory: they are this process's, and
// start empty after a restart, when no upload is in progress any more.
// The zero value is ready to use; it must not be copied after first use.
type UploadSlots struct {
	mu    sync.Mutex
	n     map[string]int
	total int
}

// Acquire takes one of the at most limit slots of uploader. It reports
// false, and takes nothing, when uploader has limit uploads in progress
// already (or limit is below 1). Otherwise the upload holds its slot until
// release is called; calling release again does nothing.
func (s *UploadSlots) Acquire(uploader string, limit int) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[uploader] >= limit {
		return nil, false
	}
	if s.n == nil {
		s.n = make(map[string]int)
	}
	s.n[uploader]++
	s.total++
	var once sync.Once
	return func() { once.Do(func() { s.release(uploader) }) }, true
}

// release gives back one slot of uploader, forgetting an uploader with
// none left, so that the map holds only uploaders with uploads in
// progress.
func (s *UploadSlots) release(uploader string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.n[uploader] <= 1 {
		delete(s.n, uploader)
		return
	}
	s.n[uploader]--
}

// InProgress returns how many slots uploader holds.
func (s *UploadSlots) InProgress(uploader string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[uploader]
}

// Total returns how many slots all uploaders hold: the uploads in
// progress.
func (s *UploadSlots) Total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Uploaders returns how many uploaders hold at least one slot.
func (s *UploadSlots) Uploaders() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.n)
}
