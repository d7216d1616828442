// The system zlib (Debian zlib1g-dev); used by Storage to inflate compressed qcow2 clusters.
#include <zlib.h>
