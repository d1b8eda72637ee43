# Every dependency comes from a Debian package (see .ci/install-deps); none is
# vendored or downloaded at build time.
find_package(PkgConfig REQUIRED)
# xxHash: libxxhash-dev ships a pkg-config file.
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_package(Threads REQUIRED)
if(MAPKV_TESTS)
  # doctest-dev ships a CMake package with doctest_discover_tests.
  find_package(doctest REQUIRED)
endif()
