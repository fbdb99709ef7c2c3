#ifndef WARMPOOL_CCURLSHIM_H
#define WARMPOOL_CCURLSHIM_H

#include <curl/curl.h>

// curl_easy_setopt is variadic and Swift cannot call C variadics, so each argument
// kind curl accepts gets one typed entry point.
CURLcode warmpool_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode warmpool_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode warmpool_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode warmpool_curl_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode warmpool_curl_setopt_write_function(CURL *handle, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode warmpool_curl_setopt_header_function(CURL *handle, size_t (*callback)(char *, size_t, size_t, void *));
CURLcode warmpool_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode warmpool_curl_getinfo_double(CURL *handle, CURLINFO info, double *value);

#endif
