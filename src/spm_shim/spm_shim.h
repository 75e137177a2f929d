/* C interface of libimp_spm_shim.so, a thin wrapper around SentencePiece.
 *
 * Debian's libsentencepiece carries its own copy of protobuf, whose symbols
 * clash with LibTorch's when both are linked into one process image (the
 * process crashes before main). The imp library therefore never links
 * SentencePiece: it opens this shim with dlopen(RTLD_LOCAL | RTLD_DEEPBIND),
 * which keeps the shim's protobuf private, and calls the functions below.
 * Only C types cross the boundary, and the caller owns every buffer.
 *
 * Errors: a function that fails returns NULL or a negative value and stores
 * a message that imp_spm_last_error() returns, per thread. */
#ifndef IMP_SPM_SHIM_H_
#define IMP_SPM_SHIM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IMP_SPM_EXPORT __attribute__((visibility("default")))

/* Raised whenever a signature below changes, so that a stale shim is rejected. */
#define IMP_SPM_SHIM_ABI_VERSION 1

/* A loaded SentencePiece model. */
typedef struct imp_spm_model imp_spm_model;

/* Returns IMP_SPM_SHIM_ABI_VERSION of the build that produced the shim. */
IMP_SPM_EXPORT int imp_spm_abi_version(void);

/* Returns the message of the last failed call on this thread, or "". The
 * pointer stays valid until the next shim call on this thread. */
IMP_SPM_EXPORT const char* imp_spm_last_error(void);

/* Trains a unigram model on `count` NUL-terminated sentences and writes it to
 * `model_path` through a temporary file and a rename, so the file is never
 * left half written. Special ids: pad 0, unk 1, eos 2, no bos. Returns 0, or
 * -1 on failure. */
IMP_SPM_EXPORT int imp_spm_train(const char* const* sentences, size_t count, const char* model_path,
                                 int vocab_size);

/* Loads a model file or the bytes of one. Returns NULL on failure. */
IMP_SPM_EXPORT imp_spm_model* imp_spm_load_file(const char* path);
IMP_SPM_EXPORT imp_spm_model* imp_spm_load_bytes(const char* bytes, size_t size);

/* Frees a model. NULL is ignored. */
IMP_SPM_EXPORT void imp_spm_free(imp_spm_model* model);

/* Vocabulary size and special ids. An id is -1 when the model defines none. */
IMP_SPM_EXPORT int imp_spm_vocab_size(const imp_spm_model* model);
IMP_SPM_EXPORT int imp_spm_pad_id(const imp_spm_model* model);
IMP_SPM_EXPORT int imp_spm_unk_id(const imp_spm_model* model);
IMP_SPM_EXPORT int imp_spm_bos_id(const imp_spm_model* model);
IMP_SPM_EXPORT int imp_spm_eos_id(const imp_spm_model* model);

/* Encodes `size` bytes of UTF-8 text into ids, without special tokens, and
 * copies up to `capacity` of them into `ids`. Returns the total number of ids,
 * which can exceed `capacity` (call again with a larger buffer), or -1 on
 * failure. Safe to call from several threads on one model, because
 * SentencePieceProcessor::Encode is const, and SentencePiece's maintainers
 * state on the project tracker that it may run on several threads at once. */
IMP_SPM_EXPORT int64_t imp_spm_encode(const imp_spm_model* model, const char* text, size_t size,
                                      int32_t* ids, size_t capacity);

/* Decodes `count` ids into UTF-8 text and copies up to `capacity` bytes of it
 * into `text`, without a terminating NUL. Returns the full length in bytes,
 * which can exceed `capacity`, or -1 on failure (e.g. an id out of range). */
IMP_SPM_EXPORT int64_t imp_spm_decode(const imp_spm_model* model, const int32_t* ids, size_t count,
                                      char* text, size_t capacity);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* IMP_SPM_SHIM_H_ */
