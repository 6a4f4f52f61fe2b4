package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nvbind/nvbind/internal/fileio"
)

// checkpointFile is the driver's record of the claims it prepared, in its plugin folder:
// a restarted or upgraded driver unprepares what an earlier process prepared.
const checkpointFile = "checkpoint.json"

// checkpointVersion is the format; a file of another version is refused, not guessed at.
const checkpointVersion = 1

// maxCheckpointSize bounds the read: a node runs at most a few hundred pods.
const maxCheckpointSize = 16 << 20

type checkpoint struct {
	Version int                       `json:"version"`
	Claims  map[types.UID]*claimState `json:"claims"`
}

// claimState is one prepared claim: what it got and the spec that gives it.
type claimState struct {
	Namespace string           `json:"namespace"`
	Name      string           `json:"name"`
	Spec      string           `json:"spec"`
	Devices   []preparedDevice `json:"devices"`
}

type preparedDevice struct {
	Requests []string `json:"requests"`
	Pool     string   `json:"pool"`
	Device   string   `json:"device"`
	UUID     string   `json:"uuid"`
	// GPU is the UUID of the GPU the device is or is part of (a MIG device's parent).
	GPU string   `json:"gpu"`
	CDI []string `json:"cdi"`
	// Admin is an admin-access allocation, which holds nothing (the scheduler does not
	// count it either).
	Admin bool `json:"admin,omitempty"`
}

// overlaps tells whether two prepared devices share hardware: the same device, or a
// whole GPU and a MIG device of it.
func (p preparedDevice) overlaps(uuid, gpu string) bool {
	return p.UUID == uuid || (p.UUID == p.GPU && p.GPU == gpu) || (uuid == gpu && p.GPU == gpu)
}

func loadCheckpoint(dir string) (*checkpoint, error) {
	p := filepath.Join(dir, checkpointFile)
	cp := &checkpoint{Version: checkpointVersion, Claims: map[types.UID]*claimState{}}
	data, err := fileio.ReadFile(p, maxCheckpointSize)
	if errors.Is(err, fs.ErrNotExist) {
		return cp, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the checkpoint: %w", err)
	}
	if err := json.Unmarshal(data, cp); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", p, err)
	}
	if cp.Version != checkpointVersion {
		return nil, fmt.Errorf("checkpoint %s: version %d, this driver reads %d", p, cp.Version, checkpointVersion)
	}
	if cp.Claims == nil {
		cp.Claims = map[types.UID]*claimState{}
	}
	return cp, nil
}

func (cp *checkpoint) save(dir string) error {
	data, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return fileio.WriteAtomic(filepath.Join(dir, checkpointFile), data, 0o600, nil)
}

// clone copies the checkpoint, so that a failed save leaves the one in memory as on disk.
func (cp *checkpoint) clone() *checkpoint {
	out := &checkpoint{Version: cp.Version, Claims: make(map[types.UID]*claimState, len(cp.Claims))}
	for k, v := range cp.Claims {
		out.Claims[k] = v
	}
	return out
}
