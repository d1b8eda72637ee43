// text.h: byte-string helpers of the mapkv CLI: UTF-8 checks, JSON string
// escaping, base64, and the escaping of keys for line-oriented output.
#ifndef MAPKV_TOOLS_CLI_TEXT_H_
#define MAPKV_TOOLS_CLI_TEXT_H_

#include <string>
#include <string_view>

namespace mapkv::cli {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points
// past U+10FFFF), i.e. it can be written as a JSON string without loss.
bool IsValidUtf8(std::string_view s);

// Appends `s` (valid UTF-8) as a JSON string with its quotes. Escapes `"`,
// `\` and the control characters below U+0020 (\b \f \n \r \t, else \u00xx
// in lowercase hex); everything else is copied as is, so the output is the
// same as Python's json.dumps(s, ensure_ascii=False).
void AppendJsonString(std::string* out, std::string_view s);

// Standard base64 (RFC 4648 alphabet, with '=' padding).
void AppendBase64(std::string* out, std::string_view bytes);
std::string Base64Encode(std::string_view bytes);
// Strict decoding: length a multiple of 4, only the alphabet, padding only at
// the end, unused bits zero (so every input has one encoding). Appends the
// bytes to `*out` and returns true, or returns false and leaves *out in an
// unspecified state.
bool Base64Decode(std::string_view text, std::string* out);

// Appends `s` for one-line human-readable output (keys, messages): printable
// UTF-8 is copied as is; a backslash becomes \\, newline \n, tab \t, carriage
// return \r, and any other control character (C0, DEL, C1) or byte that is
// not part of well-formed UTF-8 becomes \xHH (lowercase hex), one per byte.
void AppendEscaped(std::string* out, std::string_view s);
std::string Escaped(std::string_view s);

}  // namespace mapkv::cli

#endif  // MAPKV_TOOLS_CLI_TEXT_H_
