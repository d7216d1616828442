#!/bin/sh
# Builds the libFuzzer harnesses in fuzz/harnesses/ against the library sources, with
# -sanitize=fuzzer,address. Kept out of `swift build`: each library module is compiled here
# as a static library with coverage instrumentation, then each harness is linked with the
# modules it needs. Output: $FUZZ_OUT (default .build/fuzz)/bin/<harness>.
#
#   fuzz/build.sh            # every harness
#   fuzz/build.sh vmconf     # only these
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${FUZZ_OUT:-$ROOT/.build/fuzz}
SWIFTC=${SWIFTC:-swiftc}
export PATH=/opt/swift/usr/bin:$PATH
FLAGS="-parse-as-library -O -g -sanitize=fuzzer,address -enable-testing -swift-version 6"
mkdir -p "$OUT/lib" "$OUT/bin"

# swift-log's Logging (Devices needs it): the checkout SwiftPM made, or fetch it once.
LOGSRC=$ROOT/.build/checkouts/swift-log/Sources/Logging
if [ ! -d "$LOGSRC" ]; then
    (cd "$ROOT" && swift package resolve >/dev/null)
fi

# module: sources directory, then the modules it imports
lib() {
    name=$1; src=$2
    stamp="$OUT/lib/$name.stamp"
    newest=$(find "$src" -name '*.swift' -newer "$stamp" 2>/dev/null | head -1)
    if [ -f "$stamp" ] && [ -z "$newest" ] && [ -f "$OUT/lib/lib$name.a" ]; then return; fi
    echo "fuzz: compiling $name" >&2
    extra=""
    [ "$name" = Logging ] && extra="-swift-version 5 -package-name swift_log"
    # shellcheck disable=SC2046
    $SWIFTC $FLAGS $extra -emit-library -static -module-name "$name" \
        -emit-module -emit-module-path "$OUT/lib/$name.swiftmodule" \
        -I "$OUT/lib" -I "$ROOT/Sources/CZlib" -wmo \
        $(find "$src" -name '*.swift' | sort) -o "$OUT/lib/lib$name.a"
    touch "$stamp"
}

lib GuestMemory "$ROOT/Sources/GuestMemory"
lib Hypervisor "$ROOT/Sources/Hypervisor"
lib VMConfig "$ROOT/Sources/VMConfig"
lib Control "$ROOT/Sources/Control"
lib Storage "$ROOT/Sources/Storage"
lib Boot "$ROOT/Sources/Boot"
lib Logging "$LOGSRC"
lib Devices "$ROOT/Sources/Devices"

LIBS="-L$OUT/lib -lDevices -lLogging -lBoot -lStorage -lControl -lVMConfig -lHypervisor -lGuestMemory -lz"
names=${*:-$(cd "$ROOT/fuzz/harnesses" && ls *.swift | sed 's/\.swift$//')}
for n in $names; do
    echo "fuzz: linking $n" >&2
    $SWIFTC $FLAGS -module-name "$(echo $n | tr -d -)" -I "$OUT/lib" -I "$ROOT/Sources/CZlib" "$ROOT/fuzz/harnesses/$n.swift" $ROOT/fuzz/support/*.swift \
        $LIBS -o "$OUT/bin/$n" 2>&1 | grep -v "Cannot export local symbol" >&2 || true
    [ -x "$OUT/bin/$n" ] || { echo "fuzz: $n failed to build" >&2; exit 1; }
done
