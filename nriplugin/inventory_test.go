package nriplugin

import (
	"github.com/nvbind/nvbind/gpu"
	"github.com/nvbind/nvbind/internal/gputest"
)

func node(path string, major, minor int64) gpu.DeviceNode { return gputest.Node(path, major, minor) }

// testInventory is gputest's: two GPUs (the first in MIG mode with two MIG devices) and a
// small driver.
func testInventory() *gpu.Inventory { return gputest.Inventory() }
