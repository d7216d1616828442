// X86Emulator: see docs/ARCHITECTURE.md.
