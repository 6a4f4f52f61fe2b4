package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Source delivers events until ctx ends; an error means it cannot (NVML without events).
type Source interface {
	Run(ctx context.Context, emit func(Event)) error
}

// NVMLSource waits on NVML's event set for the XID events of the given GPUs.
type NVMLSource struct {
	Lib  nvml.Interface
	GPUs []string // UUIDs
	Log  *slog.Logger
	// Wait is how long one wait on the event set lasts before ctx is checked again.
	Wait time.Duration
}

// Run registers every GPU that supports XID events and waits for them. A GPU that does
// not support them is logged and left to discovery.
func (s NVMLSource) Run(ctx context.Context, emit func(Event)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("NVML: %v", r)
		}
	}()
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ret := s.Lib.Init(); ret != nvml.SUCCESS {
		return fmt.Errorf("NVML init: %s", nvml.ErrorString(ret))
	}
	defer func() { _ = s.Lib.Shutdown() }()
	set, ret := s.Lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("NVML event set: %s", nvml.ErrorString(ret))
	}
	defer func() { _ = set.Free() }()
	registered := 0
	for _, uuid := range s.GPUs {
		dev, ret := s.Lib.DeviceGetHandleByUUID(uuid)
		if ret != nvml.SUCCESS {
			log.Warn("no XID events for this GPU: NVML does not find it", "uuid", uuid, "error", nvml.ErrorString(ret))
			continue
		}
		types, ret := dev.GetSupportedEventTypes()
		if ret != nvml.SUCCESS || types&nvml.EventTypeXidCriticalError == 0 {
			log.Warn("no XID events for this GPU: it does not report them", "uuid", uuid, "error", nvml.ErrorString(ret))
			continue
		}
		if ret := dev.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
			log.Warn("no XID events for this GPU", "uuid", uuid, "error", nvml.ErrorString(ret))
			continue
		}
		registered++
	}
	if registered == 0 && len(s.GPUs) > 0 {
		return errors.New("NVML reports XID events for none of the GPUs")
	}
	waitMS := uint32(5000)
	if s.Wait > 0 && s.Wait < time.Hour {
		waitMS = uint32(s.Wait.Milliseconds()) //nolint:gosec // under an hour of milliseconds
	}
	for ctx.Err() == nil {
		data, ret := set.Wait(waitMS)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		case nvml.ERROR_GPU_IS_LOST:
			// which one NVML does not say: all. NVML answers so at once, on every wait,
			// while the GPU stays lost: one event per wait time, not a busy loop
			if ctx.Err() == nil {
				emit(Event{Lost: true})
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(waitMS) * time.Millisecond):
			}
			continue
		default:
			log.Warn("NVML event wait failed", "error", nvml.ErrorString(ret))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if data.EventType != nvml.EventTypeXidCriticalError {
			continue
		}
		e := Event{XID: data.EventData}
		if data.Device != nil {
			if uuid, ret := data.Device.GetUUID(); ret == nvml.SUCCESS {
				e.GPU = uuid
			}
		}
		if ctx.Err() == nil { // a source replaced meanwhile leaves the event to its successor
			emit(e)
		}
	}
	return nil
}

// NVMLAnswers asks NVML whether a GPU still answers: its handle and its PCI information.
func NVMLAnswers(lib nvml.Interface) func(string) bool {
	return func(uuid string) (ok bool) {
		defer func() {
			if recover() != nil {
				ok = false
			}
		}()
		if lib.Init() != nvml.SUCCESS {
			return false
		}
		defer func() { _ = lib.Shutdown() }()
		dev, ret := lib.DeviceGetHandleByUUID(uuid)
		if ret != nvml.SUCCESS {
			return false
		}
		_, ret = dev.GetPciInfo()
		return ret == nvml.SUCCESS
	}
}

// Budgets of the event file: a line, and what one read takes.
const (
	maxEventLine = 256
	maxEventRead = 64 << 10
)

// FileSource reads events appended to a regular file, one per line: "<GPU UUID or index>
// <XID>" or "<GPU UUID or index> lost". It stands for NVML in tests (the cluster test's
// fake event path) and takes events from other monitors. Lines longer than 256 bytes and
// lines that do not parse are logged and skipped; each poll reads at most 64 KiB, and
// memory stays within one line whatever the file holds.
type FileSource struct {
	Path string
	// Resolve maps a GPU index to its UUID (the current inventory's).
	Resolve func(index int) (string, bool)
	Poll    time.Duration
	Log     *slog.Logger
}

// Run polls the file for lines appended since the last poll; a file that shrinks, or is
// replaced by another (rotated), is read again from its start. Events already in the file
// when Run starts are not replayed, nor is the rest of a line it starts in the middle of.
// The file read is held open between polls, so that a file put in its place is always
// told apart (its inode cannot be the same while the old one is open).
func (s FileSource) Run(ctx context.Context, emit func(Event)) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := s.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	r := eventReader{path: s.Path}
	defer r.close()
	_ = r.open(true) // a file not there yet is read from its start once it is
	lastErr := ""
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, err := r.read()
		if msg := fmt.Sprint(err); err != nil && msg != lastErr && !errors.Is(err, os.ErrNotExist) {
			log.Warn("XID event file not read", "path", s.Path, slog.Any("error", err)) // once, until it changes
		}
		lastErr = fmt.Sprint(err)
		r.lines(data, func(line string, err error) {
			if err != nil {
				log.Warn("XID event line skipped", "path", s.Path, slog.Any("error", err))
				return
			}
			if ctx.Err() != nil {
				return
			}
			if e, err := s.parse(line); err != nil {
				log.Warn("XID event line skipped", "path", s.Path, slog.Any("error", err))
			} else {
				emit(e)
			}
		})
	}
}

// eventReader follows the event file: the file it holds open, how far it read it, and
// the line it is in.
type eventReader struct {
	path     string
	f        *os.File
	off      int64
	line     []byte
	skipping bool // inside a line not to parse (too long, or begun before the start)
}

// lines splits data, what read returned, into whole lines for each, carrying a line
// that goes on into the next read; a line longer than maxEventLine, or one begun before
// the reader's start, is not passed on (the first, as an error).
func (r *eventReader) lines(data []byte, each func(line string, tooLong error)) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		chunk := data
		if i >= 0 {
			chunk, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if !r.skipping {
			if len(r.line)+len(chunk) > maxEventLine {
				each("", fmt.Errorf("longer than %d bytes", maxEventLine))
				r.line, r.skipping = nil, true
			} else {
				r.line = append(r.line, chunk...)
			}
		}
		if i < 0 {
			return // the line goes on in the next read
		}
		if !r.skipping {
			each(string(r.line), nil)
		}
		r.line, r.skipping = r.line[:0], false
	}
}

func (r *eventReader) close() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
	}
}

// open opens the file at the path if it is a regular file (stat first: a device or FIFO
// is never opened), from its start, or from its end when atEnd (Run's start: in the middle
// of a line, the rest of it is skipped).
func (r *eventReader) open(atEnd bool) error {
	fi, err := os.Stat(r.path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", r.path)
	}
	f, err := os.OpenFile(r.path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		_ = f.Close()
		return fmt.Errorf("%s is not a regular file", r.path)
	}
	r.close()
	r.f, r.off, r.line, r.skipping = f, 0, nil, false
	if atEnd && fi.Size() > 0 {
		r.off = fi.Size()
		var last [1]byte
		if _, err := f.ReadAt(last[:], r.off-1); err != nil || last[0] != '\n' {
			r.skipping = true
		}
	}
	return nil
}

// read returns what was appended since the last read, at most maxEventRead bytes,
// switching to the file now at the path when it is another one.
func (r *eventReader) read() ([]byte, error) {
	if fi, err := os.Stat(r.path); err != nil {
		return nil, err
	} else if r.f == nil || !sameFile(r.f, fi) {
		if err := r.open(false); err != nil {
			return nil, err
		}
	}
	fi, err := r.f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < r.off { // truncated: from its start
		r.off, r.line, r.skipping = 0, nil, false
	}
	data, err := io.ReadAll(io.LimitReader(io.NewSectionReader(r.f, r.off, fi.Size()-r.off), maxEventRead))
	r.off += int64(len(data))
	return data, err
}

func sameFile(f *os.File, fi os.FileInfo) bool {
	held, err := f.Stat()
	return err == nil && os.SameFile(held, fi)
}

func (s FileSource) parse(line string) (Event, error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return Event{}, fmt.Errorf("%q: want \"<GPU UUID or index> <XID>\" or \"<GPU UUID or index> lost\"", line)
	}
	gpu := f[0]
	if i, err := strconv.Atoi(gpu); err == nil {
		uuid, ok := "", false
		if s.Resolve != nil {
			uuid, ok = s.Resolve(i)
		}
		if !ok {
			return Event{}, fmt.Errorf("%q: no GPU %d on this node", line, i)
		}
		gpu = uuid
	} else if !strings.HasPrefix(gpu, "GPU-") {
		return Event{}, fmt.Errorf("%q: %q is neither a GPU index nor a GPU UUID (GPU-...)", line, gpu)
	}
	if f[1] == "lost" {
		return Event{GPU: gpu, Lost: true}, nil
	}
	x, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil || x == 0 {
		return Event{}, fmt.Errorf("%q: XID %q is not a positive number", line, f[1])
	}
	return Event{GPU: gpu, XID: x}, nil
}
