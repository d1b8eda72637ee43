# Dependencies of the Windows cross build (mingw-w64, see mingw-w64.cmake).
#
# The header-only libraries come from the same Debian -dev packages as the
# native build. /usr/include cannot go on the mingw include path (it holds
# glibc's headers, which would shadow mingw's), so a directory inside the
# build tree gets symbolic links to exactly those headers and nothing else.
# xxHash is used header-only (XXH_INLINE_ALL): its compiled library is a
# Linux one. simdjson is a compiled Linux library too; the CLI uses
# nlohmann-json instead on Windows (tools/cli/CMakeLists.txt).
set(MAPKV_HOST_INCLUDE "/usr/include" CACHE PATH "Where the Debian -dev packages put their headers")
set(MAPKV_HOST_CMAKE "/usr/lib/cmake" CACHE PATH "Where doctest-dev puts doctest.cmake")
set(_mapkv_headers "${CMAKE_BINARY_DIR}/host-headers")
file(MAKE_DIRECTORY "${_mapkv_headers}")
# name in /usr/include -> Debian package that ships it
set(_mapkv_header_packages
    "xxhash.h=libxxhash-dev" "doctest=doctest-dev" "CLI=libcli11-dev" "nlohmann=nlohmann-json3-dev")
foreach(entry IN LISTS _mapkv_header_packages)
  string(REPLACE "=" ";" pair "${entry}")
  list(GET pair 0 name)
  list(GET pair 1 package)
  if(NOT EXISTS "${MAPKV_HOST_INCLUDE}/${name}")
    message(FATAL_ERROR "Windows build: ${MAPKV_HOST_INCLUDE}/${name} is missing; install the Debian package "
                        "${package} (.ci/install-deps)")
  endif()
  file(CREATE_LINK "${MAPKV_HOST_INCLUDE}/${name}" "${_mapkv_headers}/${name}" SYMBOLIC)
endforeach()

add_library(mapkv_xxhash INTERFACE)
target_include_directories(mapkv_xxhash SYSTEM INTERFACE "${_mapkv_headers}")
target_compile_definitions(mapkv_xxhash INTERFACE XXH_INLINE_ALL)

add_library(doctest::doctest INTERFACE IMPORTED)
target_include_directories(doctest::doctest SYSTEM INTERFACE "${_mapkv_headers}")
add_library(CLI11::CLI11 INTERFACE IMPORTED)
target_include_directories(CLI11::CLI11 SYSTEM INTERFACE "${_mapkv_headers}")
add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
target_include_directories(nlohmann_json::nlohmann_json SYSTEM INTERFACE "${_mapkv_headers}")

if(MAPKV_TESTS)
  # doctest_discover_tests; it runs the test binary through
  # CMAKE_CROSSCOMPILING_EMULATOR (wine) to list the tests.
  include("${MAPKV_HOST_CMAKE}/doctest/doctest.cmake")
endif()
