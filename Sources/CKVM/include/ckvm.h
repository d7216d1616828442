#ifndef CKVM_H
#define CKVM_H
/* The only C in the project: what Swift cannot import from <linux/kvm.h>. Filled in by the KVM layer. */
#include <linux/kvm.h>
#endif
