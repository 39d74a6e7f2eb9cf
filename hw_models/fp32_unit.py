"""The FP32 counterpart of a PWL table in synthesizable Verilog-2005, and its Python reference.

``fp32_pwl_unit(table)`` emits three modules:

- ``fp32_mul``: IEEE 754 binary32 multiply, round to nearest even;
- ``fp32_add``: IEEE 754 binary32 add (single path: swap, align with guard/round/sticky,
  add or subtract, leading-zero normalisation), round to nearest even;
- the unit: ``x`` (binary32) against the table's ``N-1`` breakpoints as binary32 constants
  (``x >= p_j`` on the sign-magnitude ordering key), the segment index as the count of true
  comparisons, the segment's slope ``k_i = K_i * 2**-slope_frac`` and intercept
  ``b_i = B_i * 2**-icpt_frac`` as constants (exact in binary32), ``y = fp32_add(fp32_mul(k_i, x), b_i)``:
  a multiply then an add, two roundings (not fused). One unit serves every scale: the exponent
  carries it.

Documented simplifications: **no denormals** -- an input with a zero exponent field is zero
(its fraction ignored) and a result below the smallest normal (after rounding, exponent
unbounded) is flushed to a zero of the result's sign; a NaN result is the quiet NaN
``0x7fc00000``; ``x = -0`` compares below ``+0`` breakpoints (the ordering key separates the zeros).

:func:`mul`, :func:`add` and :func:`pwl` are the obviously-correct references (exact rationals,
then one rounding), against which the tests simulate the Verilog over random and special vectors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

from intsim import GQAError

from .verilog import check_name

QNAN = 0x7FC00000


# --- reference (exact rationals, one rounding per operation) ----------------------------------

def _decode(bits: int):
    """``(sign, value)``: value a Fraction, or 'inf'/'nan'; a zero exponent field reads as zero."""
    s, e, f = bits >> 31 & 1, bits >> 23 & 0xFF, bits & 0x7FFFFF
    if e == 0xFF:
        return s, ("nan" if f else "inf")
    if e == 0:
        return s, Fraction(0)
    return s, Fraction((1 << 23) | f, 1 << 23) * (Fraction(2) ** (e - 127))


def _encode(sign: int, v: Fraction) -> int:
    """Round ``|v|`` to binary32 (nearest even), flush below the smallest normal, overflow to infinity."""
    if v == 0:
        return sign << 31
    e = v.numerator.bit_length() - v.denominator.bit_length()
    if Fraction(2) ** e > v:
        e -= 1
    # v = m * 2**(e - 23) with m in [2**23, 2**24)
    scaled = v / (Fraction(2) ** (e - 23))
    m, rem = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * rem
    if twice > scaled.denominator or (twice == scaled.denominator and m & 1):
        m += 1
    if m == 1 << 24:
        m, e = 1 << 23, e + 1
    be = e + 127
    if be >= 0xFF:
        return sign << 31 | 0x7F800000
    if be <= 0:
        return sign << 31
    return sign << 31 | be << 23 | (m - (1 << 23))


def mul(a: int, b: int) -> int:
    (sa, va), (sb, vb) = _decode(a), _decode(b)
    s = sa ^ sb
    if va == "nan" or vb == "nan" or (va == "inf" and vb == 0) or (vb == "inf" and va == 0):
        return QNAN
    if va == "inf" or vb == "inf":
        return s << 31 | 0x7F800000
    return _encode(s, va * vb)


def add(a: int, b: int) -> int:
    (sa, va), (sb, vb) = _decode(a), _decode(b)
    if va == "nan" or vb == "nan" or (va == "inf" and vb == "inf" and sa != sb):
        return QNAN
    if va == "inf":
        return sa << 31 | 0x7F800000
    if vb == "inf":
        return sb << 31 | 0x7F800000
    total = (-va if sa else va) + (-vb if sb else vb)
    if total == 0:
        return (sa & sb) << 31 if va == 0 and vb == 0 else 0
    return _encode(int(total < 0), abs(total))


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def order_key(bits: int) -> int:
    """Unsigned key with ``key(a) >= key(b)`` iff ``a >= b`` for non-NaN binary32 (``-0 < +0``)."""
    return (~bits & 0xFFFFFFFF) if bits >> 31 else bits | 0x80000000


@dataclass(frozen=True)
class FP32Table:
    """The binary32 constants of a table: breakpoints, slopes, intercepts."""

    breakpoints: tuple[int, ...]
    slopes: tuple[int, ...]
    intercepts: tuple[int, ...]

    @classmethod
    def from_table(cls, table) -> "FP32Table":
        dp = table.datapath
        bps = []
        for j, p in enumerate(table.breakpoints):
            bits = f32_bits(float(p))
            if struct.unpack("<f", struct.pack("<I", bits))[0] != float(p):
                raise GQAError(f"breakpoints[{j}]", f"{p} is not exact in binary32")
            bps.append(bits)
        k = tuple(_encode(int(c < 0), Fraction(abs(int(c)), 1 << dp.slope_frac)) for c in table.slopes)
        b = tuple(_encode(int(c < 0), Fraction(abs(int(c)), 1 << dp.icpt_frac)) for c in table.intercepts)
        return cls(tuple(bps), k, b)

    def segment(self, x: int) -> int:
        return sum(order_key(x) >= order_key(p) for p in self.breakpoints)

    def evaluate(self, x: int) -> int:
        i = self.segment(x)
        return add(mul(self.slopes[i], x), self.intercepts[i])


# --- Verilog ----------------------------------------------------------------------------------------

FP32_MUL = """\
// fp32_mul: IEEE 754 binary32 a * b, round to nearest even; zero-exponent inputs are zero,
// results below the smallest normal flush to zero, NaN results are 0x7fc00000
module fp32_mul (input [31:0] a, input [31:0] b, output [31:0] y);
  wire [7:0] ea = a[30:23], eb = b[30:23];
  wire za = (ea == 8'd0), zb = (eb == 8'd0);
  wire ia = (ea == 8'hff) & (a[22:0] == 23'd0), ib = (eb == 8'hff) & (b[22:0] == 23'd0);
  wire na = (ea == 8'hff) & (a[22:0] != 23'd0), nb = (eb == 8'hff) & (b[22:0] != 23'd0);
  wire s = a[31] ^ b[31];
  wire [47:0] p = {1'b1, a[22:0]} * {1'b1, b[22:0]};   // in [2**46, 2**48)
  wire top = p[47];
  wire [23:0] m = top ? p[47:24] : p[46:23];
  wire g = top ? p[23] : p[22];
  wire st = top ? (|p[22:0]) : (|p[21:0]);
  wire [24:0] mr = {1'b0, m} + {24'd0, g & (st | m[0])};
  wire signed [10:0] e = $signed({3'b0, ea}) + $signed({3'b0, eb}) - 11'sd127 + $signed({10'd0, top})
                         + $signed({10'd0, mr[24]});
  wire [22:0] frac = mr[24] ? 23'd0 : mr[22:0];
  assign y = (na | nb | (ia & zb) | (ib & za)) ? 32'h7fc00000 :
             (ia | ib) ? {s, 8'hff, 23'd0} :
             (za | zb | (e <= 11'sd0)) ? {s, 31'd0} :
             (e >= 11'sd255) ? {s, 8'hff, 23'd0} : {s, e[7:0], frac};
endmodule
"""

FP32_ADD = """\
// fp32_add: IEEE 754 binary32 a + b, round to nearest even, single path; zero-exponent
// inputs are zero, results below the smallest normal flush to zero, NaN results are 0x7fc00000
module fp32_add (input [31:0] a, input [31:0] b, output [31:0] y);
  wire [7:0] ea = a[30:23], eb = b[30:23];
  wire za = (ea == 8'd0), zb = (eb == 8'd0);
  wire ia = (ea == 8'hff) & (a[22:0] == 23'd0), ib = (eb == 8'hff) & (b[22:0] == 23'd0);
  wire na = (ea == 8'hff) & (a[22:0] != 23'd0), nb = (eb == 8'hff) & (b[22:0] != 23'd0);
  wire [22:0] fa = za ? 23'd0 : a[22:0], fb = zb ? 23'd0 : b[22:0];
  wire swap = {eb, fb} > {ea, fa};                     // the larger magnitude first
  wire sB = swap ? b[31] : a[31], sS = swap ? a[31] : b[31];
  wire [7:0] eB = swap ? eb : ea, eS = swap ? ea : eb;
  wire [23:0] mB = swap ? {~zb, fb} : {~za, fa}, mS = swap ? {~za, fa} : {~zb, fb};
  wire [7:0] d = eB - eS;
  wire [4:0] dd = (d > 8'd31) ? 5'd31 : d[4:0];
  wire [50:0] ext = {mS, 27'd0} >> dd;                 // aligned small operand, bits shifted out below
  wire [26:0] al = {ext[50:25], ext[24] | (|ext[23:0])};   // mantissa, guard, round, sticky
  wire [26:0] bl = {mB, 3'b000};
  wire sub = sB ^ sS;
  wire [27:0] sum = sub ? ({1'b0, bl} - {1'b0, al}) : ({1'b0, bl} + {1'b0, al});
  // normalise: a carry shifts right by one (keeping the sticky), else shift left by the leading zeros
  wire [26:0] sr = {sum[27:2], sum[1] | sum[0]};
  reg [4:0] lz;
  integer i;
  always @(*) begin
    lz = 5'd27;
    for (i = 0; i <= 26; i = i + 1)
      if (sum[i]) lz = 26 - i;
  end
  wire [26:0] sl = sum[26:0] << lz;
  wire [26:0] n = sum[27] ? sr : sl;
  wire [23:0] m = n[26:3];
  wire [24:0] mr = {1'b0, m} + {24'd0, n[2] & ((|n[1:0]) | m[0])};
  wire signed [10:0] e = $signed({3'b0, eB}) + $signed({10'd0, sum[27]}) - $signed({6'd0, sum[27] ? 5'd0 : lz})
                         + $signed({10'd0, mr[24]});
  wire [22:0] frac = mr[24] ? 23'd0 : mr[22:0];
  wire zero = (sum == 28'd0);
  assign y = (na | nb | (ia & ib & (a[31] ^ b[31]))) ? 32'h7fc00000 :
             ia ? {a[31], 8'hff, 23'd0} : ib ? {b[31], 8'hff, 23'd0} :
             zero ? {(za & zb) ? (a[31] & b[31]) : 1'b0, 31'd0} :
             (e <= 11'sd0) ? {sB, 31'd0} :
             (e >= 11'sd255) ? {sB, 8'hff, 23'd0} : {sB, e[7:0], frac};
endmodule
"""


@dataclass(frozen=True)
class FP32Unit:
    name: str
    text: str
    constants: FP32Table


def fp32_pwl_unit(table, name: str | None = None) -> FP32Unit:
    """Verilog of ``table``'s FP32 counterpart (modules ``fp32_mul``, ``fp32_add`` and the unit)."""
    name = check_name(name if name is not None else f"fp32_pwl_{table.function}_{table.entries}")
    if name in ("fp32_mul", "fp32_add"):
        raise GQAError("name", f"{name!r} is the name of a submodule", "choose another module name")
    c = FP32Table.from_table(table)
    n, nb = table.entries, table.entries - 1
    iw = max(1, (n - 1).bit_length())
    L = [f"// {name}: FP32 counterpart of a {n}-entry PWL table ({table.function}), generated by gqa-sim "
         "(hw_models.fp32_unit); do not edit",
         "// y = fp32_add(fp32_mul(k_i, x), b_i), i = #{j : x >= p_j} (binary32 constants); no denormals",
         f"module {name} (input [31:0] x, output [31:0] y);",
         "  wire [31:0] key = x[31] ? ~x : (x | 32'h80000000);   // sign-magnitude -> unsigned order"]
    for j, p in enumerate(c.breakpoints):
        L.append(f"  wire c{j} = (key >= 32'h{order_key(p):08x});  // x >= {struct.unpack('<f', struct.pack('<I', p))[0]!r}")
    terms = " + ".join(f"{{{iw - 1}'d0, c{j}}}" if iw > 1 else f"c{j}" for j in range(nb))
    L.append(f"  wire [{iw - 1}:0] idx = {terms};")
    L += ["  reg [31:0] k, b;", "  always @(*) begin", "    case (idx)"]
    for i in range(n):
        lab = "default" if i == n - 1 else f"{iw}'d{i}"
        L.append(f"      {lab}: begin k = 32'h{c.slopes[i]:08x}; b = 32'h{c.intercepts[i]:08x}; end")
    L += ["    endcase", "  end", "  wire [31:0] kx;", "  fp32_mul u_mul (.a(k), .b(x), .y(kx));",
          "  fp32_add u_add (.a(kx), .b(b), .y(y));", "endmodule", ""]
    return FP32Unit(name, FP32_MUL + "\n" + FP32_ADD + "\n" + "\n".join(L), c)
