/* Everything is static inline in include/chostatomics.h; SwiftPM needs one source file. */
#include "chostatomics.h"
