// Package doctor checks a host for what GPU containers need — driver, device nodes, NVML,
// driver libraries, CDI specs, the runtimes' NRI and CDI settings, nvbind's NRI plugin —
// and explains each finding in one line with a fix.
package doctor
