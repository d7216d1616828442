// The system zlib (Debian zlib1g-dev): Storage inflates compressed qcow2 clusters with it,
// VMM checksums the state stream's sections (crc32).
#include <zlib.h>
