// Opens an SAE through the installed C library, encodes a few rows, decodes them back and
// prints the codes and the reconstructions. The handle lives in an RAII class, so it is
// released on every path out, exceptions included.
//
//   make && ./encode SAE_DIR          (after tools/install-c.sh; see Makefile)
#include <sae_engine.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

// A failed call, with the library's explanation of it.
class SaeError : public std::runtime_error {
public:
    SaeError(const char *call, SaeStatus st)
        : std::runtime_error(std::string(call) + ": " + sae_status_string(static_cast<int32_t>(st)) +
                             ": " + last_message()) {}

private:
    static std::string last_message() {
        std::string msg(sae_last_error_message(nullptr, 0), '\0');
        sae_last_error_message(msg.data(), msg.size());
        if (!msg.empty()) msg.pop_back();  // the NUL
        return msg;
    }
};

void check(const char *call, SaeStatus st) {
    if (st != SAE_STATUS_OK) throw SaeError(call, st);
}

// Fixed-width codes of `rows` rows: latent indices (-1 = padding) and values, [rows, k].
struct TopK {
    std::size_t rows = 0, k = 0;
    std::vector<int32_t> indices;
    std::vector<float> values;
};

// An SAE on a backend; owns its handle (move-only).
class Sae {
public:
    explicit Sae(const std::string &path, const char *backend = "cpu") {
        check("sae_open", sae_open(path.c_str(), nullptr, backend, 0, &h_));
    }
    ~Sae() { sae_free(h_); }
    Sae(const Sae &) = delete;
    Sae &operator=(const Sae &) = delete;
    Sae(Sae &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Sae &operator=(Sae &&o) noexcept {
        if (this != &o) {
            sae_free(h_);
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }

    std::size_t d_in() const { return sae_d_in(h_); }
    std::size_t n_latents() const { return sae_n_latents(h_); }
    std::size_t k() const { return sae_k(h_); }
    std::string backend() const {
        std::string s(sae_backend_name(h_, nullptr, 0), '\0');
        sae_backend_name(h_, s.data(), s.size());
        if (!s.empty()) s.pop_back();
        return s;
    }

    TopK encode(const std::vector<float> &x) const {
        if (!sae_is_topk(h_)) throw std::invalid_argument("this example encodes TopK SAEs");
        TopK c;
        c.rows = x.size() / d_in();
        c.k = k();
        c.indices.resize(c.rows * c.k);
        c.values.resize(c.rows * c.k);
        check("sae_encode_topk_host",
              sae_encode_topk_host(h_, x.data(), c.rows, d_in(), c.indices.data(), c.values.data(),
                                   c.k, nullptr, nullptr));
        return c;
    }

    std::vector<float> decode(const TopK &c) const {
        std::vector<float> x(c.rows * d_in());
        check("sae_decode_topk_host",
              sae_decode_topk_host(h_, c.indices.data(), c.values.data(), c.rows, c.k, nullptr,
                                   nullptr, x.data(), d_in()));
        return x;
    }

private:
    SaeHandle *h_ = nullptr;
};

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s SAE_DIR\n", argv[0]);
        return 2;
    }
    try {
        Sae sae(argv[1]);
        const std::size_t d = sae.d_in(), rows = 4;
        std::printf("sae-engine %s: d_in=%zu n_latents=%zu k=%zu backend=%s\n", sae_version(), d,
                    sae.n_latents(), sae.k(), sae.backend().c_str());
        // Quarter steps in [-2, 2]: exact in f32, so the output is the same everywhere.
        std::vector<float> x(rows * d);
        for (std::size_t r = 0; r < rows; r++)
            for (std::size_t j = 0; j < d; j++)
                x[r * d + j] = static_cast<float>(static_cast<int>((r * 7 + j * 3) % 17) - 8) / 4.0f;
        const TopK codes = sae.encode(x);
        const std::vector<float> recon = sae.decode(codes);
        for (std::size_t r = 0; r < rows; r++) {
            std::printf("codes %zu:", r);
            for (std::size_t j = 0; j < codes.k; j++)
                std::printf(" %d:%.9g", codes.indices[r * codes.k + j],
                            static_cast<double>(codes.values[r * codes.k + j]));
            std::printf("\nrecon %zu:", r);
            for (std::size_t j = 0; j < d; j++)
                std::printf(" %.9g", static_cast<double>(recon[r * d + j]));
            std::printf("\n");
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "encode: %s\n", e.what());
        return 1;
    }
    return 0;
}
