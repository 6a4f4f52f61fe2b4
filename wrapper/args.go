package wrapper

import "strings"

// Call is what the wrapper reads of an OCI runtime command line (runc's, which crun and
// youki share): the subcommand and, for create and run, the bundle and the log.
type Call struct {
	// Command is the subcommand: create, start, state, kill, delete, run, ...
	Command string
	// Bundle is create's and run's bundle folder ("" for the current folder).
	Bundle string
	// Log and LogFormat are the global --log and --log-format: where the runtime's
	// caller (containerd's shim, Docker) reads errors from.
	Log, LogFormat string
	// ID is create's and run's container ID, where the command line names exactly one;
	// PidFile is their --pid-file, where the runtime writes the container's process ID.
	ID, PidFile string
}

// runc's flags that take a value, global and of create/run; every other flag is a
// switch. A flag written --name=value carries its value.
var (
	globalValueFlags  = map[string]bool{"log": true, "log-format": true, "root": true, "criu": true, "rootless": true}
	commandValueFlags = map[string]bool{"bundle": true, "b": true, "console-socket": true, "pidfd-socket": true, "pid-file": true,
		"preserve-fds": true}
)

// flagName returns the name of a flag argument ("-b", "--bundle", "--bundle=x", "-bundle")
// and its inline value.
func flagName(arg string) (name, value string, inline, ok bool) {
	if len(arg) < 2 || arg[0] != '-' || arg == "--" {
		return "", "", false, false
	}
	name = strings.TrimLeft(arg, "-")
	name, value, inline = strings.Cut(name, "=")
	return name, value, inline, true
}

// ParseCall reads a runtime command line (without the program name). It never fails:
// what it cannot read is passed on to the real runtime as it is.
func ParseCall(args []string) Call {
	var c Call
	i := 0
	for ; i < len(args); i++ {
		name, value, inline, ok := flagName(args[i])
		if !ok {
			break
		}
		if globalValueFlags[name] && !inline && i+1 < len(args) {
			i++
			value = args[i]
		}
		switch name {
		case "log":
			c.Log = value
		case "log-format":
			c.LogFormat = value
		}
	}
	if i >= len(args) {
		return c
	}
	c.Command = args[i]
	if c.Command != "create" && c.Command != "run" {
		return c
	}
	ids := 0
	for i++; i < len(args); i++ {
		name, value, inline, ok := flagName(args[i])
		if !ok {
			ids++
			c.ID = args[i]
			continue
		}
		if commandValueFlags[name] && !inline && i+1 < len(args) {
			i++
			value = args[i]
		}
		switch name {
		case "bundle", "b":
			c.Bundle = value
		case "pid-file":
			c.PidFile = value
		}
	}
	if ids != 1 {
		c.ID = "" // none, or more than one: not a command line the wrapper reads an ID from
	}
	return c
}
