package ds

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mimi/caddy-mimi/mimicore/attachment/storage/localfs"
	"github.com/caddy-mimi/caddy-mimi/mimicore/moh"
	"github.com/caddy-mimi/caddy-mimi/mimicore/store/sqlitestore"

	_ "modernc.org/sqlite" // the parent reads the child's database directly
)

// attachCrashEnv, when set to a directory, makes TestAttachmentCrash the
// child that uploads into it until it is killed.
const attachCrashEnv = "DS_ATTACH_CRASH_DIR"

// crashClock is the fixed clock of the child and of the parent's checks.
var crashClock = func() time.Time { return time.Unix(1_790_000_000, 0) }

// openCrashAttachments opens the attachment store and backend of dir.
func openCrashAttachments(t testing.TB, dir string) (*sqlitestore.Store, *localfs.Backend) {
	t.Helper()
	st, err := sqlitestore.Open(context.Background(), filepath.Join(dir, "attach.db"), sqlitestore.WithClock(crashClock))
	if err != nil {
		t.Fatal(err)
	}
	b, err := localfs.New(filepath.Join(dir, "attachments"))
	if err != nil {
		t.Fatal(err)
	}
	return st, b
}

// crashUploads is the child: 8 uploaders of random ciphertexts up to
// 256 KiB, each printing "ok <token> <sha256 of the ciphertext>" in one
// write after its upload was answered. They are all alice, so the bound
// on her uploads in progress is lifted to 8.
func crashUploads(t *testing.T, dir string) {
	f := newFixture(t)
	st, b := openCrashAttachments(t, dir)
	f.svc.Attachments = &Attachments{Store: st, Backend: b, MaxUploadsInProgress: 8}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				data := make([]byte, 1+mrand.IntN(256<<10))
				rand.Read(data)
				h := sha256.Sum256(data)
				// Random content: no two headers are the same signed bytes.
				body := f.sign(t, f.alice, 0, uploadHeader(f.g1, data), 0)
				req, err := f.svc.Authenticate(context.Background(), body)
				if err != nil {
					fmt.Fprintln(os.Stderr, "authenticate:", err)
					os.Exit(3)
				}
				resp, err := f.svc.Upload(context.Background(), req, bytes.NewReader(data))
				if err != nil {
					fmt.Fprintln(os.Stderr, "upload:", err)
					os.Exit(3)
				}
				os.Stdout.WriteString("ok " + hex.EncodeToString(resp.Token) + " " + hex.EncodeToString(h[:]) + "\n")
			}
		}()
	}
	wg.Wait()
}

func uploadHeader(group, data []byte) moh.RequestBody {
	h := sha256.Sum256(data)
	return moh.RequestBody{Type: moh.AttachmentUpload, Upload: moh.UploadAttachmentHeader{
		GroupID: group, ContentLength: uint64(len(data)), ContentHash: h[:]}}
}

// TestAttachmentCrash kills (SIGKILL) a process in the middle of a stream
// of uploads, then checks that every acknowledged attachment is there and
// intact, that every committed record's bytes hash to its content hash (no
// partial upload is visible), and that a sweep removes what the crash left
// half done: reservations, temporary files.
func TestAttachmentCrash(t *testing.T) {
	if dir := os.Getenv(attachCrashEnv); dir != "" {
		crashUploads(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("runs and kills a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestAttachmentCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), attachCrashEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acks [][2]string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[0] == "ok" {
			acks = append(acks, [2]string{fields[1], fields[2]})
		}
		if len(acks) == 40 {
			break
		}
	}
	cmd.Process.Kill() // SIGKILL
	// Acknowledgements written before the kill still count.
	rest, _ := io.ReadAll(out)
	for _, line := range strings.Split(string(rest), "\n") {
		if fields := strings.Fields(line); len(fields) == 3 && fields[0] == "ok" {
			acks = append(acks, [2]string{fields[1], fields[2]})
		}
	}
	cmd.Wait()
	if len(acks) < 40 {
		t.Fatalf("the child acknowledged %d uploads; stderr:\n%s", len(acks), stderr.String())
	}

	st, b := openCrashAttachments(t, dir)
	defer st.Close()
	group := []byte("group one")
	for i, ack := range acks {
		token, _ := hex.DecodeString(ack[0])
		rec, err := st.LookupAttachment(context.Background(), group, sha256.Sum256(token))
		if err != nil {
			t.Fatalf("acknowledged upload %d is gone: %v", i, err)
		}
		if got := hashObject(t, b, rec.Object); got != ack[1] {
			t.Fatalf("acknowledged upload %d: bytes hash to %s, want %s", i, got, ack[1])
		}
	}
	db, err := sql.Open("sqlite", filepath.Join(dir, "attach.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT object, content_hash FROM attachments WHERE state = 1")
	if err != nil {
		t.Fatal(err)
	}
	committed := 0
	for rows.Next() {
		var object string
		var want []byte
		if err := rows.Scan(&object, &want); err != nil {
			t.Fatal(err)
		}
		if got := hashObject(t, b, object); got != hex.EncodeToString(want) {
			t.Fatalf("committed object %s hashes to %s, not its content hash", object, got)
		}
		committed++
	}
	rows.Close()
	t.Logf("%d uploads acknowledged, %d committed after SIGKILL", len(acks), committed)

	a := &Attachments{Store: st, Backend: b}
	stats, err := a.Sweep(context.Background(), crashClock().Add(2*DefaultUploadDeadline))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sweep after the crash: %+v", stats)
	var pending int
	db.QueryRow("SELECT COUNT(*) FROM attachments WHERE state = 0").Scan(&pending)
	tmp, _ := os.ReadDir(filepath.Join(dir, "attachments", "tmp"))
	if pending != 0 {
		t.Fatalf("%d reservations of interrupted uploads left after the sweep", pending)
	}
	// Temporary files are swept by age on the wall clock: age them.
	old := time.Now().Add(-3 * time.Hour)
	for _, e := range tmp {
		os.Chtimes(filepath.Join(dir, "attachments", "tmp", e.Name()), old, old)
	}
	if _, err := b.Sweep(context.Background(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "attachments", "tmp")); len(left) != 0 {
		t.Fatalf("%d temporary files left after the sweep", len(left))
	}
}

// hashObject is the hex SHA-256 of object's bytes.
func hashObject(t *testing.T, b *localfs.Backend, object string) string {
	t.Helper()
	o, err := b.Open(context.Background(), object)
	if err != nil {
		t.Fatalf("opening %s: %v", object, err)
	}
	defer o.Close()
	h := sha256.New()
	if _, err := io.Copy(h, o); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
