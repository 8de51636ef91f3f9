"""ECP5 PLL (EHXPLLL) that clocks the ``sync`` domain faster than the board oscillator.

Divider search and parameters as nextpnr's ``ecppll`` tool (nextpnr/ecp5/ecppll: PFD 3.125-400 MHz, VCO
400-800 MHz, feedback from CLKOP, so f_out = f_in * CLKFB_DIV / CLKI_DIV; CLKOP_CPHASE = (CLKOP_DIV - 1) // 2).
nextpnr-ecp5 derives the output clock's timing constraint from the input pin's, so the build report's Fmax is
checked against the PLL frequency.  The domain is held in reset until the PLL locks.

With a second output (``PllConfig.clkos_div``), ``add_pll_domains`` clocks two domains from one PLL: ``sync`` (the
link and UART) from CLKOS = VCO / CLKOS_DIV and ``engine`` from CLKOP, for a design whose engine sits behind
``hw.link.crossing.EngineCrossing``.  CLKOS has CLKOP's coarse phase (ecppll's secondary output at 0 degrees).
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
    clkos_div: int | None = None  # second output (CLKOS): VCO / clkos_div, or None

    @property
    def f_out_mhz(self) -> float:
        return self.f_in_mhz * self.clkfb_div / self.clki_div

    @property
    def vco_mhz(self) -> float:
        return self.f_out_mhz * self.clkop_div

    @property
    def f_os_mhz(self) -> float | None:
        return None if self.clkos_div is None else self.vco_mhz / self.clkos_div

    def with_second_output(self, max_mhz: float) -> "PllConfig":
        """This setting plus CLKOS at the fastest VCO / k (k = 1..128) not above ``max_mhz``."""
        k = max(1, -int(-self.vco_mhz // max_mhz))  # ceil: the output must not exceed max_mhz
        while self.vco_mhz / k > max_mhz + 1e-9:
            k += 1
        if k > 128:
            raise ValueError(f"no CLKOS divider makes at most {max_mhz} MHz from a {self.vco_mhz} MHz VCO")
        return PllConfig(self.clki_div, self.clkfb_div, self.clkop_div, self.f_in_mhz, k)


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
    through an EHXPLLL; with ``os_domain`` (and ``cfg.clkos_div``), CLKOP drives ``op_domain`` and CLKOS drives
    ``os_domain`` instead."""

    def __init__(self, clk_in, cfg: PllConfig, *, op_domain: str = "sync", os_domain: str | None = None):
        if (os_domain is None) != (cfg.clkos_div is None):
            raise ValueError("a second PLL output needs both a CLKOS divider and a domain for it")
        self.clk_in = clk_in
        self.cfg = cfg
        self.op_domain = op_domain
        self.os_domain = os_domain
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        c = self.cfg
        clk_out = Signal()
        second = {}
        if self.os_domain is not None:
            clk_os = Signal()
            second = dict(a_FREQUENCY_PIN_CLKOS=f"{c.f_os_mhz:g}", p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=c.clkos_div,
                          p_CLKOS_CPHASE=(c.clkop_div - 1) // 2, p_CLKOS_FPHASE=0, o_CLKOS=clk_os)
            m.d.comb += ClockSignal(self.os_domain).eq(clk_os)
            m.submodules.os_reset_sync = ResetSynchronizer(~self.locked, domain=self.os_domain)
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
            o_CLKOP=clk_out, o_LOCK=self.locked, **second)
        m.d.comb += ClockSignal(self.op_domain).eq(clk_out)
        m.submodules.reset_sync = ResetSynchronizer(~self.locked, domain=self.op_domain)
        return m


def add_pll_sync_domain(m: Module, platform, config: PllConfig) -> None:
    """Clock ``m``'s ``sync`` domain from the ECP5 PLL (``config``) fed by the board's oscillator pin."""
    m.domains.sync = ClockDomain("sync")
    clk_pin = platform.request(platform.default_clk, dir="-")
    m.submodules.clk_in = clk_buf = io.Buffer("i", clk_pin)
    m.submodules.pll = Ecp5Pll(clk_buf.i, config)


def add_pll_domains(m: Module, platform, config: PllConfig) -> None:
    """Clock ``m``'s ``engine`` domain from CLKOP and its ``sync`` domain from CLKOS (``config.clkos_div``) of the
    ECP5 PLL fed by the board's oscillator pin."""
    m.domains.sync = ClockDomain("sync")
    m.domains.engine = ClockDomain("engine")
    clk_pin = platform.request(platform.default_clk, dir="-")
    m.submodules.clk_in = clk_buf = io.Buffer("i", clk_pin)
    m.submodules.pll = Ecp5Pll(clk_buf.i, config, op_domain="engine", os_domain="sync")
