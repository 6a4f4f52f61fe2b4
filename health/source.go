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
			emit(Event{Lost: true})
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
		emit(e)
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
// when Run starts are not replayed.
func (s FileSource) Run(ctx context.Context, emit func(Event)) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := s.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	var pos filePos
	if fi, err := os.Stat(s.Path); err == nil && fi.Mode().IsRegular() {
		pos = filePos{id: fileID(fi), off: fi.Size()}
	}
	var line []byte
	skipping := false // inside a line longer than maxEventLine, up to its end
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, next, err := readFrom(s.Path, pos)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				log.Warn("XID event file not read", "path", s.Path, slog.Any("error", err))
			}
			continue
		}
		if next.id != pos.id || next.off < pos.off {
			line, skipping = nil, false // another file, or truncated: from its start
		}
		pos = next
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			chunk := data
			if i >= 0 {
				chunk, data = data[:i], data[i+1:]
			} else {
				data = nil
			}
			if !skipping {
				if len(line)+len(chunk) > maxEventLine {
					log.Warn("XID event line skipped", "path", s.Path, slog.Any("error", fmt.Errorf("longer than %d bytes", maxEventLine)))
					line, skipping = nil, true
				} else {
					line = append(line, chunk...)
				}
			}
			if i < 0 {
				break // the line goes on in the next read
			}
			if !skipping {
				if e, err := s.parse(string(line)); err != nil {
					log.Warn("XID event line skipped", "path", s.Path, slog.Any("error", err))
				} else {
					emit(e)
				}
			}
			line, skipping = line[:0], false
		}
	}
}

// filePos is where the event file was read to: which file, and how far.
type filePos struct {
	id  [2]uint64 // device and inode
	off int64
}

func fileID(fi os.FileInfo) [2]uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint64{st.Dev, st.Ino}
	}
	return [2]uint64{}
}

// readFrom reads at most maxEventRead bytes of the event file from pos (from its start
// when it is another file than pos's, or shorter than pos), and says where it got to. It
// never blocks on a FIFO or a device: only a regular file is read.
func readFrom(path string, pos filePos) ([]byte, filePos, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0) //nolint:gosec // the operator's file
	if err != nil {
		return nil, pos, err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return nil, pos, err
	}
	if !fi.Mode().IsRegular() {
		return nil, pos, fmt.Errorf("%s is not a regular file", path)
	}
	next := filePos{id: fileID(fi), off: pos.off}
	if next.id != pos.id || fi.Size() < pos.off {
		next.off = 0
	}
	data, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, next.off, fi.Size()-next.off), maxEventRead))
	next.off += int64(len(data))
	return data, next, err
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
