/* An x86-64-v3 program for the v3 guest (guests/debian/build.sh --variant v3), built
 * with gcc -static -O2 -march=x86-64-v3: prints which CPU features glibc found usable
 * (the ones its ifuncs choose the AVX2/FMA string and math routines by), then hashes the
 * results of glibc's string functions and sums libm's transcendental functions. Run on
 * the host and in the guest on the software CPU, the output must be the same. */
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
#include <sys/platform/x86.h>
int main(void) {
    printf("usable: avx %d avx2 %d fma %d f16c %d bmi2 %d movbe %d\n", CPU_FEATURE_ACTIVE(AVX), CPU_FEATURE_ACTIVE(AVX2),
           CPU_FEATURE_ACTIVE(FMA), CPU_FEATURE_ACTIVE(F16C), CPU_FEATURE_ACTIVE(BMI2), CPU_FEATURE_ACTIVE(MOVBE));
    static char buf[70000], b2[70000];
    unsigned long h = 1469598103934665603UL;
    for (int i = 0; i < 69999; i++) buf[i] = 'a' + (i * 7919 % 23);
    buf[69999] = 0;
    for (int k = 0; k < 200; k++) {
        buf[60000 - k * 13] = 0;
        h = (h ^ strlen(buf)) * 1099511628211UL;
        h = (h ^ (unsigned long)((char *)memchr(buf, 'q' - k % 5, 69999) - buf)) * 1099511628211UL;
        h = (h ^ (unsigned long)(strchr(buf + k, 'b' + k % 20) - buf)) * 1099511628211UL;
        h = (h ^ (unsigned long)(strrchr(buf, 'c' + k % 20) - buf)) * 1099511628211UL;
        memcpy(b2, buf + k, 50000 - k); memmove(b2 + 3, b2, 40000); memset(b2 + 100, k, 3000 + k);
        h = (h ^ (unsigned long)(memcmp(b2, buf, 40000 + k) + 1000)) * 1099511628211UL;
        h = (h ^ (unsigned long)(strcmp(b2 + 5000, buf + 5000) + 1000)) * 1099511628211UL;
        h = (h ^ (unsigned long)(strncmp(b2 + 9, buf + 5, 1000 + k) + 1000)) * 1099511628211UL;
        h = (h ^ strnlen(buf + k, 30000)) * 1099511628211UL;
        buf[60000 - k * 13] = 'z';
    }
    double s = 0;
    for (int i = 1; i < 20000; i++) { double x = i * 0.001; s += exp(-x) + log(x) + sin(x) * cos(x) + pow(x, 0.37) + atan(x); }
    printf("strings %016lx math %.17g %a\n", h, s, s);
    return 0;
}
