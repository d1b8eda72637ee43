# Toolchain file: cross-compile mapkv for 64-bit Windows with mingw-w64
# (Debian: g++-mingw-w64-x86-64-posix) and run what was built under Wine
# (Debian: wine64), e.g. the test binary from ctest.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(_mingw x86_64-w64-mingw32)
# The -posix variant: std::thread and std::mutex through winpthreads.
set(CMAKE_C_COMPILER ${_mingw}-gcc-posix)
set(CMAKE_CXX_COMPILER ${_mingw}-g++-posix)
set(CMAKE_RC_COMPILER ${_mingw}-windres)
set(CMAKE_FIND_ROOT_PATH /usr/${_mingw})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# Static runtime: the executables need no mingw DLL next to them under Wine.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
find_program(MAPKV_WINE NAMES wine64 wine PATHS /usr/lib/wine)
if(MAPKV_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MAPKV_WINE})
else()
  message(WARNING "wine not found: the Windows tests cannot be run (install wine64: .ci/install-deps windows)")
endif()
