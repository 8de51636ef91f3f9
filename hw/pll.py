"""ECP5 PLL (EHXPLLL) that clocks the ``sync`` domain faster than the board oscillator.

Divider search and parameters as nextpnr's ``ecppll`` tool (nextpnr/ecp5/ecppll: PFD 3.125-400 MHz, VCO
400-800 MHz, feedback from CLKOP, so f_out = f_in * CLKFB_DIV / CLKI_DIV; CLKOP_CPHASE = (CLKOP_DIV - 1) // 2).
nextpnr-ecp5 derives the output clock's timing constraint from the input pin's, so the build report's Fmax is
checked against the PLL frequency.  The domain is held in reset until the PLL locks.
"""
from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

PFD_MHZ = (3.125, 400.0)
VCO_MHZ = (400.0, 800.0)


@dataclass(frozen=True)
class PllConfig:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    f_in_mhz: float

    @property
    def f_out_mhz(self) -> float:
        return self.f_in_mhz * self.clkfb_div / self.clki_div

    @property
    def vco_mhz(self) -> float:
        return self.f_out_mhz * self.clkop_div


def ecp5_pll_config(f_in_mhz: float, f_out_mhz: float) -> PllConfig:
    """Dividers whose output is closest to ``f_out_mhz`` (ties: the VCO nearest 600 MHz, as ecppll); raises ValueError
    when no setting comes within 1 %."""
    best = None
    for clki_div in range(1, 129):
        if not PFD_MHZ[0] <= f_in_mhz / clki_div <= PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, 81):
            out = f_in_mhz * clkfb_div / clki_div
            for clkop_div in range(1, 129):
                vco = out * clkop_div
                if not VCO_MHZ[0] <= vco <= VCO_MHZ[1]:
                    continue
                key = (abs(out - f_out_mhz), abs(vco - 600.0))
                if best is None or key < best[0]:
                    best = (key, PllConfig(clki_div, clkfb_div, clkop_div, f_in_mhz))
    if best is None or best[0][0] > 0.01 * f_out_mhz:
        raise ValueError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz")
    return best[1]


class Ecp5Pll(Elaboratable):
    """Drives the ``sync`` clock domain (defined by the parent) from ``clk_in`` (the board oscillator's pin)
    through an EHXPLLL."""

    def __init__(self, clk_in, cfg: PllConfig):
        self.clk_in = clk_in
        self.cfg = cfg
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        clk_out = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{c.f_in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{c.f_out_mhz:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=c.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=c.clkop_div,
            p_CLKOP_CPHASE=(c.clkop_div - 1) // 2, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=c.clkfb_div,
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, i_CLKFB=clk_out, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk_out, o_LOCK=self.locked)
        m.d.comb += ClockSignal("sync").eq(clk_out)
        m.submodules.reset_sync = ResetSynchronizer(~self.locked, domain="sync")
        return m


def add_pll_sync_domain(m: Module, platform, config: PllConfig) -> None:
    """Clock ``m``'s ``sync`` domain from the ECP5 PLL (``config``) fed by the board's oscillator pin."""
    m.domains.sync = ClockDomain("sync")
    clk_pin = platform.request(platform.default_clk, dir="-")
    m.submodules.clk_in = clk_buf = io.Buffer("i", clk_pin)
    m.submodules.pll = Ecp5Pll(clk_buf.i, config)
