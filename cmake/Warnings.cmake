# One INTERFACE target carries the project's warning flags; every mapkv target
# links it. -Werror comes with MAPKV_WERROR (on in the dev and CI presets).
add_library(mapkv_warnings INTERFACE)
target_compile_options(mapkv_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align
  -Wunused -Woverloaded-virtual -Wimplicit-fallthrough
  $<$<BOOL:${MAPKV_WERROR}>:-Werror>)
