# Every dependency comes from a Debian package (see .ci/install-deps); none is
# vendored or downloaded at build time. Each is reached through a target of
# the same name on both systems:
#   mapkv_xxhash                   xxHash (libxxhash-dev)
#   doctest::doctest               doctest (doctest-dev), with MAPKV_TESTS
#   CLI11::CLI11, simdjson::simdjson, nlohmann_json::nlohmann_json (tools, tests)
# The Windows cross build (cmake/mingw-w64.cmake) takes the header-only ones
# from cmake/WindowsDeps.cmake instead.
find_package(Threads REQUIRED)
if(WIN32)
  include(${CMAKE_CURRENT_LIST_DIR}/WindowsDeps.cmake)
  return()
endif()
find_package(PkgConfig REQUIRED)
# xxHash: libxxhash-dev ships a pkg-config file.
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
add_library(mapkv_xxhash INTERFACE)
target_link_libraries(mapkv_xxhash INTERFACE PkgConfig::XXHASH)
if(MAPKV_TESTS)
  # doctest-dev ships a CMake package with doctest_discover_tests.
  find_package(doctest REQUIRED)
  include(doctest)  # doctest_discover_tests
endif()
