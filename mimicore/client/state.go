package client

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/caddy-mimi/caddy-mimi/mimicore/mls"
	"github.com/caddy-mimi/caddy-mimi/mimicore/wire"
)

// The on-disk layout of a client's state directory. Every name is chosen
// here, never taken from what the gateway or another member sent.
const (
	stateFile = "client" // the client record (identity, KeyPackages, groups, cursor)
	lockName  = "lock"   // flock(2)ed while a Client is open
	groupsDir = "groups" // one file per group: the Member, named by a local number
	tmpPrefix = ".tmp-"  // writeFileAtomic's temporary files, in either directory
)

// stateFormat is the version byte of the client record encoding. Formats
// 1 to 3, read still, have no republish_after; formats 1 and 2 no
// republish_due either, and format 1 no binding_issued.
const stateFormat = 4

// ErrStateEncoding is wrapped by every failure to decode a stored client
// record.
var ErrStateEncoding = errors.New("client: invalid stored state")

// ErrInUse is returned by Open and Init when another Client, in this
// process or another, holds the state directory.
var ErrInUse = errors.New("client: state directory in use")

// storedKeyPackage is a published KeyPackage with what the client needs to
// join with it: the HPKE key pairs are derived from the stored seeds.
type storedKeyPackage struct {
	ref        []byte
	keyPackage []byte // the encoded KeyPackage
	initSeed   []byte // DeriveKeyPair seed of the init key
	leafSeed   []byte // DeriveKeyPair seed of the leaf encryption key
	lastResort bool
}

// storedGroup names the file holding a group's Member.
type storedGroup struct {
	groupID []byte
	file    uint64 // groups/<file>
}

// record is the client record, stored in the file "client":
//
//	struct {
//	    uint8 format = 4;
//	    opaque client_uri<V>;
//	    uint16 cipher_suite;
//	    opaque signature_private_key<V>; // Ed25519 seed or ECDSA scalar
//	    opaque binding<V>;               // the ClientBinding (extension data)
//	    uint64 binding_issued;           // Unix seconds the client got it (not in format 1)
//	    uint64 cursor;                   // seq of the last queued message processed
//	    StoredKeyPackage key_packages<V>;
//	    StoredGroup groups<V>;
//	    uint64 next_file;
//	    uint8 republish_due;             // not in formats 1 and 2
//	    uint64 republish_after;          // Unix nanoseconds (UTC) until which a due
//	                                     // republish is held, 0: none (not in formats 1 to 3)
//	} ClientRecord;
//	struct {
//	    opaque ref<V>; opaque key_package<V>;
//	    opaque init_seed<V>; opaque leaf_seed<V>; uint8 last_resort;
//	} StoredKeyPackage;
//	struct { opaque group_id<V>; uint64 file; } StoredGroup;
type record struct {
	clientURI []byte
	suite     mls.CipherSuite
	sigKey    []byte
	binding   []byte
	// bindingIssued is when the client got binding, in Unix seconds of
	// its clock; 0 when not known (a record of format 1).
	bindingIssued uint64
	cursor        uint64
	keyPackages   []storedKeyPackage
	groups        []storedGroup
	nextFile      uint64
	// republishDue is set when the binding was renewed and the
	// KeyPackages published under the previous one are yet to be
	// replaced by ones carrying the new.
	republishDue bool
	// republishAfter is when the operations may try a republish that is
	// due again (freshBinding), after the gateway refused one with a
	// Retry-After: an absolute time, in UTC, that opening the state never
	// extends (OpenContext brings one too far ahead back within
	// MaxRetryAfter, and writes it so) and that saveRecord drops once
	// it is over; zero when none.
	republishAfter time.Time
}

// MarshalWire implements wire.Marshaler.
func (r *record) MarshalWire(b *cryptobyte.Builder) {
	b.AddUint8(stateFormat)
	wire.AddOpaque(b, r.clientURI)
	b.AddUint16(uint16(r.suite))
	wire.AddOpaque(b, r.sigKey)
	wire.AddOpaque(b, r.binding)
	b.AddUint64(r.bindingIssued)
	b.AddUint64(r.cursor)
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, k := range r.keyPackages {
			wire.AddOpaque(b, k.ref)
			wire.AddOpaque(b, k.keyPackage)
			wire.AddOpaque(b, k.initSeed)
			wire.AddOpaque(b, k.leafSeed)
			wire.AddOptional(b, k.lastResort)
		}
	})
	wire.AddVector(b, func(b *cryptobyte.Builder) {
		for _, g := range r.groups {
			wire.AddOpaque(b, g.groupID)
			b.AddUint64(g.file)
		}
	})
	b.AddUint64(r.nextFile)
	wire.AddOptional(b, r.republishDue)
	var after uint64
	if r.republishAfter.After(time.Unix(0, 0)) {
		after = uint64(r.republishAfter.UnixNano())
	}
	b.AddUint64(after)
}

// UnmarshalWire implements wire.Unmarshaler.
func (r *record) UnmarshalWire(s *cryptobyte.String) bool {
	var format uint8
	var suite uint16
	var kps, groups cryptobyte.String
	var after uint64
	if !s.ReadUint8(&format) || format < 1 || format > stateFormat ||
		!wire.ReadOpaque(s, &r.clientURI) || !s.ReadUint16(&suite) ||
		!wire.ReadOpaque(s, &r.sigKey) || !wire.ReadOpaque(s, &r.binding) ||
		(format >= 2 && !s.ReadUint64(&r.bindingIssued)) ||
		!s.ReadUint64(&r.cursor) || !wire.ReadVector(s, &kps) || !wire.ReadVector(s, &groups) ||
		!s.ReadUint64(&r.nextFile) || (format >= 3 && !wire.ReadBool(s, &r.republishDue)) ||
		(format >= 4 && !s.ReadUint64(&after)) {
		return false
	}
	r.suite = mls.CipherSuite(suite)
	if after != 0 {
		// A value past the range of time.Time's nanoseconds (a damaged
		// file) is as far ahead as it goes: opening brings it back.
		r.republishAfter = time.Unix(0, int64(min(after, math.MaxInt64))).UTC()
	}
	for !kps.Empty() {
		var k storedKeyPackage
		if !wire.ReadOpaque(&kps, &k.ref) || !wire.ReadOpaque(&kps, &k.keyPackage) ||
			!wire.ReadOpaque(&kps, &k.initSeed) || !wire.ReadOpaque(&kps, &k.leafSeed) ||
			!wire.ReadBool(&kps, &k.lastResort) {
			return false
		}
		r.keyPackages = append(r.keyPackages, k)
	}
	for !groups.Empty() {
		var g storedGroup
		if !wire.ReadOpaque(&groups, &g.groupID) || !groups.ReadUint64(&g.file) {
			return false
		}
		r.groups = append(r.groups, g)
	}
	return true
}

// check refuses a decoded record that is well formed but inconsistent: a
// group stored twice, two groups in one file, or a file number not below
// next_file.
func (r *record) check() error {
	files := make(map[uint64]bool, len(r.groups))
	ids := make(map[string]bool, len(r.groups))
	for _, g := range r.groups {
		if len(g.groupID) == 0 || ids[string(g.groupID)] || files[g.file] || g.file >= r.nextFile {
			return fmt.Errorf("%w: group files are inconsistent", ErrStateEncoding)
		}
		ids[string(g.groupID)], files[g.file] = true, true
	}
	if !r.suite.Supported() {
		return fmt.Errorf("%w: cipher suite %d is not supported", ErrStateEncoding, uint16(r.suite))
	}
	return nil
}

// group returns the index of groupID in r.groups, -1 when absent.
func (r *record) group(groupID []byte) int {
	return slices.IndexFunc(r.groups, func(g storedGroup) bool { return bytes.Equal(g.groupID, groupID) })
}

// clone returns a deep enough copy of r for a change that may be
// abandoned: the slices are new, their byte contents shared (never
// modified in place).
func (r *record) clone() *record {
	c := *r
	c.keyPackages = slices.Clone(r.keyPackages)
	c.groups = slices.Clone(r.groups)
	return &c
}

// decodeRecord decodes the client record.
func decodeRecord(data []byte) (*record, error) {
	r := new(record)
	if err := wire.Unmarshal(data, r, "client record"); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return r, nil
}

// groupPath is the file of group file number n in dir.
func groupPath(dir string, n uint64) string {
	return filepath.Join(dir, groupsDir, strconv.FormatUint(n, 10))
}

// writeFileAtomic replaces path with data: it writes a temporary file in
// the same directory, syncs it, renames it over path and syncs the
// directory, so that after a crash path holds either the old or the new
// contents, never a mix.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Base(path), err)
	}
	return syncDir(dir)
}

// mkdirDurable creates dir, and any missing parent, with mode 0700, and
// syncs the parent of each directory it created and the parent of dir, so
// that the new directories' entries survive a crash once it returned
// (mkdir(2), like rename(2), is durable only once the directory holding
// the new entry is synced). dir existing already is no error.
func mkdirDurable(dir string) error {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return fmt.Errorf("creating %s: not a directory", dir)
	case err == nil:
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("creating %s: %w", dir, err)
	default:
		if parent != dir {
			if err := mkdirDurable(parent); err != nil {
				return err
			}
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
	}
	// Synced even when dir existed: an earlier run that created it may
	// have crashed before its entry was durable.
	return syncDir(parent)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// groupFormat is the version byte of a group file: 2 adds the pending
// proposals, 3 the kept attachment secrets, the pending next epoch, the
// Members of older epochs and the joining mark; files of format 1 (neither)
// and 2 are still read.
const (
	groupFormat   = 3
	groupFormatV2 = 2
	groupFormatV1 = 1
)

// maxPendingProposals bounds the proposals a group file keeps.
const maxPendingProposals = 256

// maxKeptAttachments bounds the attachment secrets a group file keeps:
// the oldest go first.
const maxKeptAttachments = 256

// maxKeptPerSender bounds the attachment secrets a group file keeps of
// one sender's leaf (the client's own included), its oldest going first:
// well below maxKeptAttachments, so that one member cannot push out the
// secrets of the others' attachments by sending many references.
const maxKeptPerSender = 32

// encodeGroup encodes a group file:
//
//	struct {
//	    uint8 format = 3;
//	    opaque member<V>;                 // mls.Member.MarshalBinary
//	    optional<opaque previous<V>>;     // the previous epoch's Member
//	    opaque pending<V>;                // the proposals of the current
//	                                      // epoch, each an MLSMessage<V>
//	    opaque attachments<V>;            // KeptAttachment entries, oldest first
//	    optional<opaque next<V>>;         // the Member of the epoch of the
//	                                      // client's commit whose answer was lost
//	    opaque older<V>;                  // the Members of the epochs before
//	                                      // previous, oldest first, each opaque<V>
//	    uint8 joining;                    // 1: an external join whose answer was lost
//	} GroupFile;
//
//	struct {
//	    uint32 sender_index;
//	    opaque nonce<V>;
//	    opaque attachment_hash<V>;
//	    opaque attachment_exporter_secret<V>;
//	} KeptAttachment;
func encodeGroup(g *group) ([]byte, error) {
	cur, err := g.cur.MarshalBinary()
	if err != nil {
		return nil, err
	}
	var prev []byte
	if g.prev != nil {
		if prev, err = g.prev.MarshalBinary(); err != nil {
			return nil, err
		}
	}
	var b cryptobyte.Builder
	b.AddUint8(groupFormat)
	wire.AddOpaque(&b, cur)
	wire.AddOptional(&b, g.prev != nil)
	if g.prev != nil {
		wire.AddOpaque(&b, prev)
	}
	var list cryptobyte.Builder
	for _, p := range g.pending {
		wire.AddOpaque(&list, p)
	}
	pending, err := list.Bytes()
	if err != nil {
		return nil, err
	}
	wire.AddOpaque(&b, pending)
	var kept cryptobyte.Builder
	for _, k := range g.attachments {
		kept.AddUint32(k.sender)
		wire.AddOpaque(&kept, k.nonce)
		wire.AddOpaque(&kept, k.hash)
		wire.AddOpaque(&kept, k.secret)
	}
	attachments, err := kept.Bytes()
	if err != nil {
		return nil, err
	}
	wire.AddOpaque(&b, attachments)
	wire.AddOptional(&b, g.next != nil)
	if g.next != nil {
		next, err := g.next.MarshalBinary()
		if err != nil {
			return nil, err
		}
		wire.AddOpaque(&b, next)
	}
	var olderList cryptobyte.Builder
	for _, o := range g.older {
		enc, err := o.MarshalBinary()
		if err != nil {
			return nil, err
		}
		wire.AddOpaque(&olderList, enc)
	}
	older, err := olderList.Bytes()
	if err != nil {
		return nil, err
	}
	wire.AddOpaque(&b, older)
	wire.AddOptional(&b, g.joining) // a boolean
	return b.Bytes()
}

// decodeGroup decodes a group file.
func decodeGroup(data []byte) (*group, error) {
	s := cryptobyte.String(data)
	var format uint8
	var cur, prev []byte
	var hasPrev bool
	var pending [][]byte
	var attachments []keptAttachment
	ok := s.ReadUint8(&format) && (format == groupFormat || format == groupFormatV2 || format == groupFormatV1) &&
		wire.ReadOpaque(&s, &cur) && wire.ReadOptional(&s, &hasPrev) && (!hasPrev || wire.ReadOpaque(&s, &prev))
	if ok && format >= groupFormatV2 {
		var raw []byte
		ok = wire.ReadOpaque(&s, &raw)
		list := cryptobyte.String(raw)
		for ok && !list.Empty() {
			var p []byte
			ok = wire.ReadOpaque(&list, &p) && len(pending) < maxPendingProposals
			pending = append(pending, p)
		}
	}
	if ok && format >= groupFormat {
		var raw []byte
		ok = wire.ReadOpaque(&s, &raw)
		list := cryptobyte.String(raw)
		for ok && !list.Empty() {
			var k keptAttachment
			ok = list.ReadUint32(&k.sender) && wire.ReadOpaque(&list, &k.nonce) && wire.ReadOpaque(&list, &k.hash) &&
				wire.ReadOpaque(&list, &k.secret) && len(attachments) < maxKeptAttachments
			attachments = append(attachments, k)
		}
	}
	var next []byte
	var hasNext bool
	var older [][]byte
	var joining bool
	if ok && format >= groupFormat {
		var raw []byte
		ok = wire.ReadOptional(&s, &hasNext) && (!hasNext || wire.ReadOpaque(&s, &next)) && wire.ReadOpaque(&s, &raw)
		list := cryptobyte.String(raw)
		for ok && !list.Empty() {
			var o []byte
			ok = wire.ReadOpaque(&list, &o) && len(older) < maxOlderEpochs
			older = append(older, o)
		}
		ok = ok && wire.ReadOptional(&s, &joining)
	}
	if !ok || !s.Empty() {
		return nil, fmt.Errorf("%w: group file: %w", ErrStateEncoding, wire.ErrMalformed)
	}
	g := &group{pending: pending, attachments: attachments, joining: joining}
	var err error
	if g.cur, err = mls.DecodeMember(cur, mls.MemberOptions{}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
	}
	if hasPrev {
		if g.prev, err = mls.DecodeMember(prev, mls.MemberOptions{}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
		}
		if !bytes.Equal(g.prev.State().GroupID(), g.cur.State().GroupID()) || g.prev.State().Epoch()+1 != g.cur.State().Epoch() {
			return nil, fmt.Errorf("%w: the previous epoch's member is not of the epoch before", ErrStateEncoding)
		}
	}
	if len(older) > 0 && !hasPrev {
		return nil, fmt.Errorf("%w: older epochs' members without the previous one's", ErrStateEncoding)
	}
	for i := len(older) - 1; i >= 0; i-- {
		o, err := mls.DecodeMember(older[i], mls.MemberOptions{})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
		}
		after := g.prev
		if len(g.older) > 0 {
			after = g.older[0]
		}
		if !bytes.Equal(o.State().GroupID(), g.cur.State().GroupID()) || o.State().Epoch()+1 != after.State().Epoch() {
			return nil, fmt.Errorf("%w: an older epoch's member is not of the epoch before the next one kept", ErrStateEncoding)
		}
		g.older = append([]*mls.Member{o}, g.older...)
	}
	if hasNext {
		if g.next, err = mls.DecodeMember(next, mls.MemberOptions{}); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStateEncoding, err)
		}
		if !bytes.Equal(g.next.State().GroupID(), g.cur.State().GroupID()) || g.next.State().Epoch() != g.cur.State().Epoch()+1 {
			return nil, fmt.Errorf("%w: the pending next epoch's member is not of the epoch after", ErrStateEncoding)
		}
	}
	return g, nil
}
