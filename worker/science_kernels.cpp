// Scientific built-in kernels: `beam`, a Gaussian bunch tracked through drift - thin solenoid -
// drift, and `constrained_sample`, uniform sampling of a box under nonlinear inequality
// constraints written as text. Thread-safety: stateless; run() may be called from many slots.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "kernel.h"

namespace simq {

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Uniform and normal random numbers from a seed: the same numbers on every platform, unlike
// std::uniform_real_distribution and std::normal_distribution, whose algorithms each standard
// library chooses.
class Random {
 public:
  explicit Random(int64_t seed) : engine_(static_cast<uint64_t>(seed)) {}

  // 53 random bits scaled to [0, 1).
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  // A standard normal number, by Box-Muller; both numbers of each pair are used.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));  // log of (0, 1]
    const double angle = 2.0 * std::numbers::pi * uniform();
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

int64_t seed_param(const Json& params, int64_t fallback) {
  return int_param_or(params, "seed", fallback, std::numeric_limits<int64_t>::min(),
                      std::numeric_limits<int64_t>::max());
}

// A finite number > 0: "param 'sigma_x': expected a number > 0, got 0".
double positive_param(const Json& params, std::string_view name) {
  const double value = number_param(params, name, -kInfinity);
  if (!(value > 0)) {
    throw KernelError(fmt::format("param '{}': expected a number > 0, got {}", name,
                                  dump_lenient(*find_param(params, name))));
  }
  return value;
}

double positive_param_or(const Json& params, std::string_view name, double fallback) {
  return find_param(params, name) == nullptr ? fallback : positive_param(params, name);
}

bool bool_param_or(const Json& params, std::string_view name, bool fallback) {
  const Json* value = find_param(params, name);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    throw KernelError(
        fmt::format("param '{}': expected boolean, got {}", name, describe_value(*value)));
  }
  return value->get<bool>();
}

// =======================================================================================
// beam

// A particle's transverse coordinates (x, x', y, y'): m, rad, m, rad.
using Vec4 = std::array<double, 4>;
using Mat4 = std::array<Vec4, 4>;

// Sums for the mean and the covariance of a bunch of particles.
class Moments {
 public:
  void add(const Vec4& v) {
    ++count_;
    for (size_t i = 0; i < 4; ++i) {
      sums_[i] += v[i];
      for (size_t j = 0; j <= i; ++j) products_[i][j] += v[i] * v[j];
    }
  }

  Vec4 mean() const {
    Vec4 out{};
    if (count_ == 0) return out;
    for (size_t i = 0; i < 4; ++i) out[i] = sums_[i] / static_cast<double>(count_);
    return out;
  }

  // The centred second moments <(v_i - <v_i>)(v_j - <v_j>)>, divided by the number of particles
  // (the bunch's own rms moments, not an estimate of a parent distribution's).
  Mat4 covariance() const {
    Mat4 out{};
    if (count_ == 0) return out;
    const Vec4 mu = mean();
    const auto n = static_cast<double>(count_);
    for (size_t i = 0; i < 4; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        out[i][j] = products_[i][j] / n - mu[i] * mu[j];
        out[j][i] = out[i][j];
      }
    }
    return out;
  }

 private:
  uint64_t count_ = 0;
  Vec4 sums_{};
  Mat4 products_{};  // lower triangle: products_[i][j] for j <= i
};

// The rms emittance of the plane whose coordinate is `i` (0: x, 2: y): sqrt(<u²><u'²> - <uu'>²).
double projected_emittance(const Mat4& sigma, size_t i) {
  const double det = sigma[i][i] * sigma[i + 1][i + 1] - sigma[i][i + 1] * sigma[i][i + 1];
  return std::sqrt(std::max(det, 0.0));
}

// Gaussian elimination with partial pivoting.
double determinant(Mat4 m) {
  double det = 1;
  for (size_t col = 0; col < 4; ++col) {
    size_t pivot = col;
    for (size_t row = col + 1; row < 4; ++row) {
      if (std::abs(m[row][col]) > std::abs(m[pivot][col])) pivot = row;
    }
    if (m[pivot][col] == 0) return 0;
    if (pivot != col) {
      std::swap(m[pivot], m[col]);
      det = -det;
    }
    det *= m[col][col];
    for (size_t row = col + 1; row < 4; ++row) {
      const double factor = m[row][col] / m[col][col];
      for (size_t k = col; k < 4; ++k) m[row][k] -= factor * m[col][k];
    }
  }
  return det;
}

// The 4D rms emittance sqrt(det Σ) (m² rad²); εx·εy for an uncoupled beam. Conserved by every
// linear symplectic map, coupling or not.
double emittance_4d(const Mat4& sigma) { return std::sqrt(std::max(determinant(sigma), 0.0)); }

// The lower-triangular L with L·Lᵀ = a, or nullopt if `a` is not positive definite.
std::optional<Mat4> cholesky(const Mat4& a) {
  Mat4 l{};
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = 0; j <= i; ++j) {
      double sum = a[i][j];
      for (size_t k = 0; k < j; ++k) sum -= l[i][k] * l[j][k];
      if (i == j) {
        if (!(sum > 0)) return std::nullopt;
        l[i][i] = std::sqrt(sum);
      } else {
        l[i][j] = sum / l[j][j];
      }
    }
  }
  return l;
}

// The inverse of a lower-triangular matrix with a non-zero diagonal, by forward substitution.
Mat4 invert_lower(const Mat4& l) {
  Mat4 inverse{};
  for (size_t col = 0; col < 4; ++col) {
    for (size_t i = col; i < 4; ++i) {
      double sum = i == col ? 1.0 : 0.0;
      for (size_t k = col; k < i; ++k) sum -= l[i][k] * inverse[k][col];
      inverse[i][col] = sum / l[i][i];
    }
  }
  return inverse;
}

// The beamline: drift - thin solenoid - drift, as linear maps applied particle by particle.
//
// The hard-edge solenoid of strength K = B / (2 Bρ) and length L maps (x, x', y, y') by a
// rotation R(KL) of the transverse plane times the same focusing in x and y, [[C, S/K],
// [-K S, C]] with C = cos KL, S = sin KL (H. Wiedemann, Particle Accelerator Physics, 4th ed.,
// Springer 2015, the solenoid transformation matrix; A. Wolski, Beam Dynamics in High Energy
// Particle Accelerators, Imperial College Press 2014, ch. 3). The thin-lens form used here
// keeps the rotation by θ = KL and replaces the focusing by a kick [[1, 0], [-1/f, 1]] with
// 1/f = K² L in both planes:
//   x' -= x / f,  y' -= y / f,  then  (x, y) -> (x cos θ + y sin θ, -x sin θ + y cos θ),
//   and the same rotation of (x', y').
// The focusing is the same in both planes, so it commutes with the rotation; the map is
// symplectic (det 1), so the 4D emittance is conserved, and a round uncoupled beam stays round,
// so its projected emittances are conserved too.
struct Beamline {
  double drift1 = 0;         // m, before the solenoid
  double inverse_focal = 0;  // 1/f = K² L, 1/m; 0 = no solenoid
  double rotation = 0;       // θ = K L, rad
  double drift2 = 0;         // m, after the solenoid

  static void drift(Vec4& v, double length) {
    v[0] += length * v[1];
    v[2] += length * v[3];
  }

  void solenoid(Vec4& v) const {
    v[1] -= inverse_focal * v[0];
    v[3] -= inverse_focal * v[2];
    const double c = std::cos(rotation);
    const double s = std::sin(rotation);
    const Vec4 in = v;
    v[0] = c * in[0] + s * in[2];
    v[1] = c * in[1] + s * in[3];
    v[2] = -s * in[0] + c * in[2];
    v[3] = -s * in[1] + c * in[3];
  }
};

struct BeamParams {
  int64_t particles = 0;
  int64_t seed = 0;
  Vec4 sd{};                  // rms of x, x', y, y' at the start (a waist): m, rad, m, rad
  bool exact_moments = true;  // rescale the sample to exactly the requested second moments
  Beamline line;
  std::optional<double> rigidity;  // Bρ, T·m, when energy_MeV is given
  int64_t scan_points = 0;         // sizes along drift2 at this many points; 0 = none
};

class BeamKernel final : public Kernel {
 public:
  static constexpr int64_t kMaxParticles = 10'000'000;
  static constexpr int64_t kMaxScanPoints = 10'000;
  static constexpr uint64_t kParticlesBetweenStopChecks = 10'000;
  static constexpr double kProtonMassMeV = 938.272;
  static constexpr double kMeVPerTeslaMetre = 299.792458;  // p [MeV/c] = 299.79 Bρ [T·m], q = e

  std::string_view name() const override { return "beam"; }
  std::string_view params_help() const override {
    return "Gaussian bunch through drift1_m, thin solenoid, drift2_m: sigma_x, sigma_y (m), "
           "emittance_x, emittance_y (m rad, at a waist), solenoid_k (1/m) or solenoid_B_T with "
           "energy_MeV (mass_MeV default 938.272), solenoid_L_m, particles (default 10000), seed "
           "(default 1), exact_moments (default true), scan_points (0 or 2 to 10000); returns "
           "sigma_x_m, sigma_y_m, radius_m, emittance_x, emittance_y, emittance_4d, waist_m";
  }

  Json run(const Json& params, const KernelContext& ctx) const override {
    const BeamParams p = read_params(params);
    const Beamline& line = p.line;
    const auto particles = static_cast<uint64_t>(p.particles);
    const auto draw = [&p](Random& random) {
      return Vec4{p.sd[0] * random.normal(), p.sd[1] * random.normal(), p.sd[2] * random.normal(),
                  p.sd[3] * random.normal()};
    };

    // With exact_moments, a first pass measures the sample's mean and covariance Σs = Ls·Lsᵀ,
    // and the second pass (the same numbers again) maps each particle by diag(sd)·Ls⁻¹ after
    // centring: the bunch then has mean 0 and covariance exactly diag(sd²), with no 1/sqrt(N)
    // sampling noise in the second moments.
    Vec4 offset{};
    Mat4 transform{};
    if (p.exact_moments) {
      Random random(p.seed);
      Moments raw;
      for_each_chunk(particles, ctx, [&] { raw.add(draw(random)); });
      const std::optional<Mat4> l = cholesky(raw.covariance());
      if (!l) {
        throw KernelError(
            "beam: the sample's covariance is singular; use more particles or exact_moments = "
            "false");
      }
      offset = raw.mean();
      const Mat4 inverse = invert_lower(*l);
      for (size_t i = 0; i < 4; ++i) {
        for (size_t j = 0; j <= i; ++j) transform[i][j] = p.sd[i] * inverse[i][j];
      }
    }

    Random random(p.seed);
    Moments initial;
    Moments after_solenoid;
    Moments final;
    for_each_chunk(particles, ctx, [&] {
      Vec4 v = draw(random);
      if (p.exact_moments) {
        Vec4 matched{};
        for (size_t i = 0; i < 4; ++i) {
          for (size_t j = 0; j <= i; ++j) matched[i] += transform[i][j] * (v[j] - offset[j]);
        }
        v = matched;
      }
      initial.add(v);
      Beamline::drift(v, line.drift1);
      line.solenoid(v);
      after_solenoid.add(v);
      Beamline::drift(v, line.drift2);
      final.add(v);
    });

    const Mat4 sigma0 = initial.covariance();
    const Mat4 sigma1 = after_solenoid.covariance();
    const Mat4 sigma2 = final.covariance();
    // Along drift2, <x²>(s) = <x²> + 2 s <xx'> + s² <x'²> from the moments at its start, and
    // the same for y: the squared rms radius <x²> + <y²> is a parabola in s.
    const auto squared_size = [&sigma1](size_t i, double s) {
      return sigma1[i][i] + 2 * s * sigma1[i][i + 1] + s * s * sigma1[i + 1][i + 1];
    };
    const double slope = sigma1[0][1] + sigma1[2][3];
    const double curvature = sigma1[1][1] + sigma1[3][3];
    const double waist =
        curvature > 0 ? std::clamp(-slope / curvature, 0.0, line.drift2) : 0.0;  // no spread: s=0

    Json result = {
        {"particles", p.particles},
        {"sigma_x_m", std::sqrt(sigma2[0][0])},
        {"sigma_y_m", std::sqrt(sigma2[2][2])},
        {"radius_m", std::sqrt(sigma2[0][0] + sigma2[2][2])},
        {"emittance_x", projected_emittance(sigma2, 0)},
        {"emittance_y", projected_emittance(sigma2, 2)},
        {"emittance_4d", emittance_4d(sigma2)},
        {"initial_emittance_x", projected_emittance(sigma0, 0)},
        {"initial_emittance_y", projected_emittance(sigma0, 2)},
        {"initial_emittance_4d", emittance_4d(sigma0)},
        {"waist_m", waist},
        {"waist_radius_m",
         std::sqrt(std::max(squared_size(0, waist) + squared_size(2, waist), 0.0))},
        {"solenoid_inverse_focal_m", line.inverse_focal},
        {"solenoid_rotation_rad", line.rotation},
    };
    if (p.rigidity) result["rigidity_Tm"] = *p.rigidity;
    if (p.scan_points > 0) {
      Json s_m = Json::array();
      Json sigma_x = Json::array();
      Json sigma_y = Json::array();
      for (int64_t k = 0; k < p.scan_points; ++k) {
        const double s =
            line.drift2 * static_cast<double>(k) / static_cast<double>(p.scan_points - 1);
        s_m.push_back(s);
        sigma_x.push_back(std::sqrt(std::max(squared_size(0, s), 0.0)));
        sigma_y.push_back(std::sqrt(std::max(squared_size(2, s), 0.0)));
      }
      result["scan"] = {{"s_m", s_m}, {"sigma_x_m", sigma_x}, {"sigma_y_m", sigma_y}};
    }
    return result;
  }

 private:
  // Calls body() `count` times, checking the stop token every kParticlesBetweenStopChecks.
  template <typename Body>
  static void for_each_chunk(uint64_t count, const KernelContext& ctx, Body&& body) {
    for (uint64_t done = 0; done < count;) {
      throw_if_stopped(ctx, "beam");
      const uint64_t end = std::min(count, done + kParticlesBetweenStopChecks);
      for (; done < end; ++done) body();
    }
  }

  static BeamParams read_params(const Json& params) {
    BeamParams p;
    p.particles = int_param_or(params, "particles", 10'000, 1, kMaxParticles);
    p.seed = seed_param(params, 1);
    const double sigma_x = positive_param(params, "sigma_x");
    const double sigma_y = positive_param(params, "sigma_y");
    const double emittance_x = positive_param(params, "emittance_x");
    const double emittance_y = positive_param(params, "emittance_y");
    p.sd = {sigma_x, emittance_x / sigma_x, sigma_y, emittance_y / sigma_y};
    p.exact_moments = bool_param_or(params, "exact_moments", true);
    if (p.exact_moments && p.particles < 5) {
      throw KernelError(
          fmt::format("param 'particles': exact_moments needs at least 5 particles, got {} (or set "
                      "exact_moments = false)",
                      p.particles));
    }
    p.line.drift1 = number_param(params, "drift1_m", 0);
    p.line.drift2 = number_param(params, "drift2_m", 0);

    const bool has_k = find_param(params, "solenoid_k") != nullptr;
    const bool has_field = find_param(params, "solenoid_B_T") != nullptr;
    if (has_k && has_field) {
      throw KernelError("params 'solenoid_k' and 'solenoid_B_T': give one or the other, not both");
    }
    if (has_field || find_param(params, "energy_MeV") != nullptr) {
      const double kinetic = positive_param(params, "energy_MeV");
      const double mass = positive_param_or(params, "mass_MeV", kProtonMassMeV);
      const double momentum = std::sqrt(kinetic * (kinetic + 2 * mass));  // pc = sqrt(E² - m²)
      p.rigidity = momentum / kMeVPerTeslaMetre;
    }
    if (has_k || has_field) {
      const double k = has_k ? number_param(params, "solenoid_k", -kInfinity)
                             : number_param(params, "solenoid_B_T", -kInfinity) / (2 * *p.rigidity);
      const double length = number_param(params, "solenoid_L_m", 0);
      p.line.inverse_focal = k * k * length;
      p.line.rotation = k * length;
    } else if (find_param(params, "solenoid_L_m") != nullptr) {
      throw KernelError(
          "param 'solenoid_L_m': given without 'solenoid_B_T' or 'solenoid_k' (omit all three "
          "for no solenoid)");
    }

    p.scan_points = int_param_or(params, "scan_points", 0, std::numeric_limits<int64_t>::min(),
                                 std::numeric_limits<int64_t>::max());
    if (p.scan_points < 0 || p.scan_points == 1 || p.scan_points > kMaxScanPoints) {
      throw KernelError(fmt::format("param 'scan_points': expected 0 (no scan) or 2 to {}, got {}",
                                    kMaxScanPoints, p.scan_points));
    }
    return p;
  }
};

// =======================================================================================
// constrained_sample

// One instruction of a compiled expression, run on a small stack.
enum class Op : uint8_t {
  kConstant,  // push `constant`
  kVariable,  // push x[variable]
  kAdd,
  kSubtract,
  kMultiply,
  kDivide,  // a divisor of 0 rejects the draw
  kPower,
  kNegate,
  kSqrt,
  kExp,
  kLog,
  kSin,
  kCos,
  kAbs,
};

struct Instruction {
  Op op = Op::kConstant;
  uint32_t variable = 0;
  double constant = 0;
};

enum class Comparison : uint8_t { kGreaterEqual, kLessEqual, kGreater, kLess };

// An inequality "<expression> <comparison> <expression>", compiled to postfix code.
class Constraint {
 public:
  Constraint(std::vector<Instruction> code, Comparison comparison, size_t stack_size)
      : code_(std::move(code)), comparison_(comparison), stack_size_(stack_size) {}

  // Values the evaluation stack must have room for.
  size_t stack_size() const { return stack_size_; }

  // Whether the point `x` satisfies the inequality. False when a division by zero occurs or a
  // side is not a finite number (sqrt(-1), log(0), overflow): such a draw is rejected.
  bool holds(const double* x, double* stack) const {
    size_t top = 0;  // values on the stack
    for (const Instruction& in : code_) {
      switch (in.op) {
        case Op::kConstant:
          stack[top++] = in.constant;
          break;
        case Op::kVariable:
          stack[top++] = x[in.variable];
          break;
        case Op::kAdd:
          --top;
          stack[top - 1] += stack[top];
          break;
        case Op::kSubtract:
          --top;
          stack[top - 1] -= stack[top];
          break;
        case Op::kMultiply:
          --top;
          stack[top - 1] *= stack[top];
          break;
        case Op::kDivide:
          --top;
          if (stack[top] == 0) return false;
          stack[top - 1] /= stack[top];
          break;
        case Op::kPower:
          --top;
          stack[top - 1] = std::pow(stack[top - 1], stack[top]);
          break;
        case Op::kNegate:
          stack[top - 1] = -stack[top - 1];
          break;
        case Op::kSqrt:
          stack[top - 1] = std::sqrt(stack[top - 1]);
          break;
        case Op::kExp:
          stack[top - 1] = std::exp(stack[top - 1]);
          break;
        case Op::kLog:
          stack[top - 1] = std::log(stack[top - 1]);
          break;
        case Op::kSin:
          stack[top - 1] = std::sin(stack[top - 1]);
          break;
        case Op::kCos:
          stack[top - 1] = std::cos(stack[top - 1]);
          break;
        case Op::kAbs:
          stack[top - 1] = std::abs(stack[top - 1]);
          break;
      }
    }
    assert(top == 2);
    const double lhs = stack[0];
    const double rhs = stack[1];
    if (!std::isfinite(lhs) || !std::isfinite(rhs)) return false;
    switch (comparison_) {
      case Comparison::kGreaterEqual:
        return lhs >= rhs;
      case Comparison::kLessEqual:
        return lhs <= rhs;
      case Comparison::kGreater:
        return lhs > rhs;
      case Comparison::kLess:
        return lhs < rhs;
    }
    return false;
  }

 private:
  std::vector<Instruction> code_;  // the left side's code, then the right side's
  Comparison comparison_;
  size_t stack_size_;
};

// A recursive-descent parser of one constraint, emitting postfix code as it goes:
//   constraint := sum comparison sum                 comparison: >= <= > <
//   sum        := product (('+' | '-') product)*
//   product    := unary (('*' | '/') unary)*
//   unary      := ('-' | '+') unary | power
//   power      := primary (('^' | '**') unary)?      right-associative: 2^3^2 = 2^9;
//                                                    -x^2 = -(x^2); 2^-1 = 0.5
//   primary    := number | x<i> | function '(' sum ')' | '(' sum ')'
//   function   := sqrt exp log sin cos abs           (log is the natural logarithm)
// Every error names the constraint, the 1-based column and what was expected:
//   "constraints[1]: at column 7: expected a number, a variable x0..x3 or '(', got ')'"
class ConstraintParser {
 public:
  static constexpr size_t kMaxDepth = 100;  // nested parentheses, functions and signs

  ConstraintParser(std::string_view text, size_t index, size_t dims)
      : text_(text), index_(index), dims_(dims) {
    next();
  }

  Constraint parse() {
    sum();
    const Token first = token_;
    const std::optional<Comparison> comparison = comparison_of(first);
    if (!comparison) fail(first, "expected an operator or a comparison (>=, <=, >, <)");
    next();
    sum();
    if (comparison_of(token_)) {
      fail_at(token_, fmt::format("a second comparison '{}' (a constraint has one: write two "
                                  "constraints)",
                                  token_.text));
    }
    if (token_.kind != Token::kEnd) fail(token_, "expected an operator or the end");
    return Constraint(std::move(code_), *comparison, max_depth_);
  }

 private:
  struct Token {
    enum Kind { kNumber, kName, kSymbol, kEnd };
    Kind kind = kEnd;
    std::string_view text;
    size_t column = 0;  // 1-based
  };

  [[noreturn]] void fail(const Token& at, std::string_view expected) const {
    const std::string got =
        at.kind == Token::kEnd ? "end of constraint" : fmt::format("'{}'", at.text);
    throw KernelError(
        fmt::format("constraints[{}]: at column {}: {}, got {}", index_, at.column, expected, got));
  }

  [[noreturn]] void fail_at(const Token& at, std::string_view message) const {
    throw KernelError(fmt::format("constraints[{}]: at column {}: {}", index_, at.column, message));
  }

  static std::optional<Comparison> comparison_of(const Token& token) {
    if (token.kind != Token::kSymbol) return std::nullopt;
    if (token.text == ">=") return Comparison::kGreaterEqual;
    if (token.text == "<=") return Comparison::kLessEqual;
    if (token.text == ">") return Comparison::kGreater;
    if (token.text == "<") return Comparison::kLess;
    return std::nullopt;
  }

  bool is(std::string_view symbol) const {
    return token_.kind == Token::kSymbol && token_.text == symbol;
  }

  // Reads the next token into token_. Anything that is not a number, a name or a known
  // operator becomes a one-character symbol that the parser then reports as unexpected.
  void next() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
    const size_t start = pos_;
    const auto digit = [this](size_t i) {
      return i < text_.size() && text_[i] >= '0' && text_[i] <= '9';
    };
    const auto letter = [this](size_t i) {
      return i < text_.size() && ((text_[i] >= 'a' && text_[i] <= 'z') ||
                                  (text_[i] >= 'A' && text_[i] <= 'Z') || text_[i] == '_');
    };
    Token::Kind kind = Token::kSymbol;
    if (pos_ >= text_.size()) {
      kind = Token::kEnd;
    } else if (digit(pos_) || (text_[pos_] == '.' && digit(pos_ + 1))) {
      kind = Token::kNumber;
      while (digit(pos_) || (pos_ < text_.size() && text_[pos_] == '.')) ++pos_;
      // An exponent only if digits follow: "2e" is the number 2, then the name e.
      if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
        size_t end = pos_ + 1;
        if (end < text_.size() && (text_[end] == '+' || text_[end] == '-')) ++end;
        if (digit(end)) {
          pos_ = end;
          while (digit(pos_)) ++pos_;
        }
      }
    } else if (letter(pos_)) {
      kind = Token::kName;
      while (letter(pos_) || digit(pos_)) ++pos_;
    } else {
      const std::string_view rest = text_.substr(pos_);
      const bool two = rest.starts_with(">=") || rest.starts_with("<=") || rest.starts_with("**") ||
                       rest.starts_with("==") || rest.starts_with("!=");
      pos_ += two ? 2 : 1;
    }
    token_ = Token{kind, text_.substr(start, pos_ - start), start + 1};
  }

  void emit(Instruction in) {
    switch (in.op) {
      case Op::kConstant:
      case Op::kVariable:
        ++depth_;
        max_depth_ = std::max(max_depth_, depth_);
        break;
      case Op::kAdd:
      case Op::kSubtract:
      case Op::kMultiply:
      case Op::kDivide:
      case Op::kPower:
        --depth_;
        break;
      default:  // unary: the depth is unchanged
        break;
    }
    code_.push_back(in);
  }

  void emit(Op op) { emit(Instruction{op, 0, 0}); }

  void sum() {
    product();
    while (is("+") || is("-")) {
      const Op op = is("+") ? Op::kAdd : Op::kSubtract;
      next();
      product();
      emit(op);
    }
  }

  void product() {
    unary();
    while (is("*") || is("/")) {
      const Op op = is("*") ? Op::kMultiply : Op::kDivide;
      next();
      unary();
      emit(op);
    }
  }

  // Every recursion passes through here, so the nesting limit is checked here.
  void unary() {
    if (++nesting_ > kMaxDepth) {
      fail_at(token_, fmt::format("nested deeper than {} levels", kMaxDepth));
    }
    if (is("-") || is("+")) {
      const bool negate = is("-");
      next();
      unary();
      if (negate) emit(Op::kNegate);
    } else {
      power();
    }
    --nesting_;
  }

  void power() {
    primary();
    if (is("^") || is("**")) {
      next();
      unary();
      emit(Op::kPower);
    }
  }

  void primary() {
    const Token token = token_;
    if (token.kind == Token::kNumber) {
      double value = 0;
      const char* end = token.text.data() + token.text.size();
      const auto [ptr, error] = std::from_chars(token.text.data(), end, value);
      if (error == std::errc::result_out_of_range) {
        fail_at(token, fmt::format("number '{}' is out of range", token.text));
      }
      if (error != std::errc() || ptr != end) {
        fail_at(token, fmt::format("'{}' is not a number", token.text));
      }
      next();
      emit(Instruction{Op::kConstant, 0, value});
    } else if (token.kind == Token::kName) {
      name(token);
    } else if (is("(")) {
      next();
      sum();
      close(token);
    } else {
      fail(token, fmt::format("expected a number, {} or '('", variables()));
    }
  }

  // A variable x<i> or a function call.
  void name(const Token& token) {
    static constexpr std::pair<std::string_view, Op> kFunctions[] = {
        {"sqrt", Op::kSqrt}, {"exp", Op::kExp}, {"log", Op::kLog},
        {"sin", Op::kSin},   {"cos", Op::kCos}, {"abs", Op::kAbs},
    };
    const std::string_view text = token.text;
    if (text.size() > 1 && text[0] == 'x' &&
        std::all_of(text.begin() + 1, text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      uint64_t variable = 0;
      const auto [ptr, error] =
          std::from_chars(text.data() + 1, text.data() + text.size(), variable);
      if (error != std::errc() || variable >= dims_) {
        fail_at(token,
                fmt::format("variable {} is out of range: dims is {}, so {}", text, dims_,
                            dims_ == 1 ? std::string("the only variable is x0")
                                       : fmt::format("the variables are x0..x{}", dims_ - 1)));
      }
      next();
      emit(Instruction{Op::kVariable, static_cast<uint32_t>(variable), 0});
      return;
    }
    for (const auto& [function, op] : kFunctions) {
      if (text != function) continue;
      next();
      const Token open = token_;
      if (!is("(")) fail(open, fmt::format("expected '(' after {}", function));
      next();
      sum();
      close(open);
      emit(op);
      return;
    }
    fail_at(token, fmt::format("unknown name '{}': expected {} or a function sqrt, exp, log, sin, "
                               "cos, abs",
                               text, variables()));
  }

  void close(const Token& open) {
    if (!is(")")) {
      fail(token_,
           fmt::format("expected an operator or ')' to close the '(' at column {}", open.column));
    }
    next();
  }

  std::string variables() const {
    return dims_ == 1 ? "the variable x0" : fmt::format("a variable x0..x{}", dims_ - 1);
  }

  std::string_view text_;
  size_t index_;  // of the constraint in the list, for messages
  size_t dims_;
  size_t pos_ = 0;  // of the next character to read
  Token token_;     // the current token
  std::vector<Instruction> code_;
  size_t depth_ = 0;      // values on the stack after the code so far
  size_t max_depth_ = 0;  // the most values ever on it
  size_t nesting_ = 0;    // of unary() calls
};

// A number or an array of `dims` numbers, each finite: the lower or upper corner of the box.
std::vector<double> corner_param(const Json& params, std::string_view name, size_t dims) {
  const Json* value = find_param(params, name);
  if (value == nullptr) throw KernelError(fmt::format("param '{}' is missing", name));
  if (value->is_number()) return std::vector<double>(dims, number_param(params, name, -kInfinity));
  if (!value->is_array() || value->size() != dims) {
    throw KernelError(fmt::format("param '{}': expected a number or an array of {} numbers, got {}",
                                  name, dims, describe_value(*value)));
  }
  std::vector<double> out;
  for (size_t i = 0; i < dims; ++i) {
    const Json& item = (*value)[i];
    if (!item.is_number() || !std::isfinite(item.get<double>())) {
      throw KernelError(fmt::format("param '{}[{}]': expected finite number, got {}", name, i,
                                    describe_value(item)));
    }
    out.push_back(item.get<double>());
  }
  return out;
}

// Running mean, variance (Welford), minimum and maximum of one coordinate.
struct RunningStats {
  uint64_t count = 0;
  double mean = 0;
  double squares = 0;  // sum of squared deviations from the mean
  double min = kInfinity;
  double max = -kInfinity;

  void add(double x) {
    ++count;
    const double delta = x - mean;
    mean += delta / static_cast<double>(count);
    squares += delta * (x - mean);
    min = std::min(min, x);
    max = std::max(max, x);
  }

  // The sample standard deviation (n - 1 in the denominator); 0 for one value.
  double std_dev() const {
    return count > 1 ? std::sqrt(squares / static_cast<double>(count - 1)) : 0.0;
  }
};

class ConstrainedSampleKernel final : public Kernel {
 public:
  static constexpr int64_t kMaxDims = 64;
  static constexpr int64_t kMaxSamples = 10'000'000;
  static constexpr int64_t kMaxDraws = 100'000'000'000;  // 10^11
  static constexpr size_t kMaxConstraints = 1000;
  static constexpr size_t kMaxConstraintLength = 10'000;  // characters
  static constexpr uint64_t kDrawsBetweenStopChecks = uint64_t{1} << 16;

  std::string_view name() const override { return "constrained_sample"; }
  std::string_view params_help() const override {
    return "uniform draws in a box kept if they meet every constraint: dims (1 to 64), lower, "
           "upper (a number or an array of dims numbers), constraints (array of strings like "
           "\"x0 + x1 <= 1\", \"sqrt(x0^2 + x1^2) < 1\"), samples (1 to 10^7 accepted), "
           "max_draws (default 100 x samples), seed (default 0); returns accepted, draws, "
           "acceptance_rate, complete, per-dimension mean, std, min, max";
  }

  Json run(const Json& params, const KernelContext& ctx) const override {
    const auto dims = static_cast<size_t>(int_param(params, "dims", 1, kMaxDims));
    const std::vector<double> lower = corner_param(params, "lower", dims);
    const std::vector<double> upper = corner_param(params, "upper", dims);
    std::vector<double> width(dims);
    for (size_t i = 0; i < dims; ++i) {
      width[i] = upper[i] - lower[i];
      if (!(width[i] > 0) || !std::isfinite(width[i])) {
        throw KernelError(fmt::format(
            "params 'lower' and 'upper': expected lower < upper in every dimension, got "
            "lower[{0}] = {1}, upper[{0}] = {2}",
            i, lower[i], upper[i]));
      }
    }
    const int64_t samples = int_param(params, "samples", 1, kMaxSamples);
    const auto max_draws =
        static_cast<uint64_t>(int_param_or(params, "max_draws", 100 * samples, 1, kMaxDraws));
    Random random(seed_param(params, 0));
    const std::vector<Constraint> constraints = read_constraints(params, dims);

    size_t stack_size = 0;
    for (const Constraint& c : constraints) stack_size = std::max(stack_size, c.stack_size());
    std::vector<double> stack(stack_size);
    std::vector<double> x(dims);
    std::vector<RunningStats> stats(dims);
    uint64_t draws = 0;
    uint64_t accepted = 0;
    const auto wanted = static_cast<uint64_t>(samples);
    while (accepted < wanted && draws < max_draws) {
      if (draws % kDrawsBetweenStopChecks == 0) throw_if_stopped(ctx, "constrained_sample");
      ++draws;
      for (size_t i = 0; i < dims; ++i) x[i] = lower[i] + width[i] * random.uniform();
      const bool ok = std::all_of(constraints.begin(), constraints.end(), [&](const Constraint& c) {
        return c.holds(x.data(), stack.data());
      });
      if (!ok) continue;
      ++accepted;
      for (size_t i = 0; i < dims; ++i) stats[i].add(x[i]);
    }

    Json result = {
        {"accepted", accepted},
        {"draws", draws},
        {"acceptance_rate", static_cast<double>(accepted) / static_cast<double>(draws)},
        {"complete", accepted == wanted},
    };
    // With no sample there are no statistics: null rather than made-up numbers.
    const auto column = [&](auto field) {
      if (accepted == 0) return Json(nullptr);
      Json out = Json::array();
      for (const RunningStats& s : stats) out.push_back(field(s));
      return out;
    };
    result["mean"] = column([](const RunningStats& s) { return s.mean; });
    result["std"] = column([](const RunningStats& s) { return s.std_dev(); });
    result["min"] = column([](const RunningStats& s) { return s.min; });
    result["max"] = column([](const RunningStats& s) { return s.max; });
    return result;
  }

 private:
  static std::vector<Constraint> read_constraints(const Json& params, size_t dims) {
    std::vector<Constraint> out;
    const Json* list = find_param(params, "constraints");
    if (list == nullptr) return out;  // no constraint: the whole box
    if (!list->is_array()) {
      throw KernelError(fmt::format("param 'constraints': expected array of strings, got {}",
                                    describe_value(*list)));
    }
    if (list->size() > kMaxConstraints) {
      throw KernelError(fmt::format("param 'constraints': expected at most {} constraints, got {}",
                                    kMaxConstraints, list->size()));
    }
    for (size_t i = 0; i < list->size(); ++i) {
      const Json& item = (*list)[i];
      if (!item.is_string()) {
        throw KernelError(fmt::format("param 'constraints[{}]': expected string, got {}", i,
                                      describe_value(item)));
      }
      const auto& text = item.get_ref<const std::string&>();
      if (text.size() > kMaxConstraintLength) {
        throw KernelError(fmt::format("constraints[{}]: expected at most {} characters, got {}", i,
                                      kMaxConstraintLength, text.size()));
      }
      out.push_back(ConstraintParser(text, i, dims).parse());
    }
    return out;
  }
};

}  // namespace

void add_science_kernels(KernelRegistry& registry) {
  registry.add(std::make_unique<BeamKernel>());
  registry.add(std::make_unique<ConstrainedSampleKernel>());
}

}  // namespace simq
