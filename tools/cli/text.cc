// text.cc: see text.h.
#include "text.h"

#ifdef MAPKV_CLI_SIMDJSON
#include <simdjson.h>
#endif

#include <array>
#include <cstdint>
#include <cstring>

namespace mapkv::cli {
namespace {

constexpr char kHex[] = "0123456789abcdef";
constexpr char kBase64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// 0..63 for alphabet characters, 0xff otherwise.
constexpr std::array<uint8_t, 256> MakeBase64Table() {
  std::array<uint8_t, 256> t{};
  for (auto& v : t) v = 0xff;
  for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(kBase64Alphabet[i])] = static_cast<uint8_t>(i);
  return t;
}
constexpr std::array<uint8_t, 256> kBase64Table = MakeBase64Table();

// Length of the well-formed UTF-8 sequence at s[i] (Unicode table 3-7), or 0
// when the bytes there are not one.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const size_t left = s.size() - i;
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  auto cont = [&](size_t k, uint8_t lo = 0x80, uint8_t hi = 0xbf) { return k < left && b(k) >= lo && b(k) <= hi; };
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c == 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
  if (c == 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

void AppendHexByte(std::string* out, uint8_t c) {
  out->append("\\x");
  out->push_back(kHex[c >> 4]);
  out->push_back(kHex[c & 15]);
}

}  // namespace

#ifdef MAPKV_CLI_SIMDJSON
bool IsValidUtf8(std::string_view s) { return simdjson::validate_utf8(s.data(), s.size()); }
#else
// Without simdjson (the Windows build): byte by byte.
bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}
#endif

// True when one of the 8 bytes of `w` is '"', '\\' or below 0x20 (exact).
inline bool WordNeedsJsonEscape(uint64_t w) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  constexpr uint64_t kHighs = 0x8080808080808080ull;
  const auto has_zero = [](uint64_t x) { return (x - kOnes) & ~x & kHighs; };
  const uint64_t below_space = (w - kOnes * 0x20) & ~w & kHighs;
  return (has_zero(w ^ (kOnes * '"')) | has_zero(w ^ (kOnes * '\\')) | below_space) != 0;
}

void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  size_t run = 0;  // start of the pending run of bytes copied as is
  for (size_t i = 0; i < s.size(); ++i) {
    // Skip 8 bytes at a time while none needs escaping.
    while (i + 8 <= s.size()) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (WordNeedsJsonEscape(w)) break;
      i += 8;
    }
    if (i == s.size()) break;
    const auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        out->append("\\u00");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void AppendBase64(std::string* out, std::string_view bytes) {
  const size_t start = out->size();
  out->resize(start + (bytes.size() + 2) / 3 * 4);
  char* o = out->data() + start;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t n = bytes.size();
  for (; n >= 3; n -= 3, p += 3) {
    const uint32_t v = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
    *o++ = kBase64Alphabet[v >> 18];
    *o++ = kBase64Alphabet[(v >> 12) & 63];
    *o++ = kBase64Alphabet[(v >> 6) & 63];
    *o++ = kBase64Alphabet[v & 63];
  }
  if (n > 0) {
    const uint32_t v = (uint32_t{p[0]} << 16) | (n == 2 ? uint32_t{p[1]} << 8 : 0);
    *o++ = kBase64Alphabet[v >> 18];
    *o++ = kBase64Alphabet[(v >> 12) & 63];
    *o++ = n == 2 ? kBase64Alphabet[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
}

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  AppendBase64(&out, bytes);
  return out;
}

bool Base64Decode(std::string_view text, std::string* out) {
  if (text.size() % 4 != 0) return false;
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  const size_t start = out->size();
  out->resize(start + text.size() / 4 * 3 - pad);
  char* o = out->data() + start;
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t full = text.size() / 4 - (pad > 0 ? 1 : 0);
  for (size_t q = 0; q < full; ++q, p += 4) {
    const uint32_t a = kBase64Table[p[0]], b = kBase64Table[p[1]], c = kBase64Table[p[2]], d = kBase64Table[p[3]];
    if ((a | b | c | d) & 0x80) return false;
    const uint32_t v = (a << 18) | (b << 12) | (c << 6) | d;
    *o++ = static_cast<char>(v >> 16);
    *o++ = static_cast<char>((v >> 8) & 0xff);
    *o++ = static_cast<char>(v & 0xff);
  }
  if (pad > 0) {
    const uint32_t a = kBase64Table[p[0]], b = kBase64Table[p[1]];
    const uint32_t c = pad == 1 ? kBase64Table[p[2]] : 0;
    if ((a | b | c) & 0x80) return false;
    if (pad == 2 && (b & 15) != 0) return false;  // unused bits must be zero
    if (pad == 1 && (c & 3) != 0) return false;
    *o++ = static_cast<char>((a << 2) | (b >> 4));
    if (pad == 1) *o++ = static_cast<char>(((b & 15) << 4) | (c >> 2));
  }
  return true;
}

void AppendEscaped(std::string* out, std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '\t') {
      out->append("\\t");
    } else if (c == '\r') {
      out->append("\\r");
    } else if (c < 0x20 || c == 0x7f) {
      AppendHexByte(out, c);
    } else if (c < 0x80) {
      out->push_back(static_cast<char>(c));
    } else {
      const size_t n = Utf8SequenceLength(s, i);
      // U+0080..U+009F (C1 controls) are 0xc2 0x80..0x9f.
      const bool c1 = n == 2 && c == 0xc2 && static_cast<uint8_t>(s[i + 1]) < 0xa0;
      if (n == 0 || c1) {
        const size_t bad = n == 0 ? 1 : n;
        for (size_t k = 0; k < bad; ++k) AppendHexByte(out, static_cast<uint8_t>(s[i + k]));
        i += bad;
      } else {
        out->append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    ++i;
  }
}

std::string Escaped(std::string_view s) {
  std::string out;
  AppendEscaped(&out, s);
  return out;
}

}  // namespace mapkv::cli
