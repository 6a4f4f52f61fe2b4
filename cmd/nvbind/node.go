package main

// nodeBinaryName is the full build of nvbind, which runs nri, device-plugin and doctor
// for the lean nvbind.
const nodeBinaryName = "nvbind-node"
