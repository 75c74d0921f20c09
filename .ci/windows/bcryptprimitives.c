/* A stand-in for Windows' bcryptprimitives.dll, for Wine 8 only (CI), never shipped:
 * Rust's standard library imports ProcessPrng, which Wine 8 lacks. It forwards to
 * RtlGenRandom (advapi32!SystemFunction036), Windows' own random generator. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
