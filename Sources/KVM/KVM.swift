// KVM: see docs/ARCHITECTURE.md.
