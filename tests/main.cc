// The single doctest main of the test binary. The binary also relaunches
// itself as a child process for cross-process tests (see test_util.h).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "test_util.h"

int main(int argc, char** argv) {
  if (int rc = 0; mapkv::test::MaybeRunChild(argc, argv, &rc)) return rc;
  doctest::Context context(argc, argv);
  return context.run();
}
