// VMConfig: see docs/ARCHITECTURE.md.
