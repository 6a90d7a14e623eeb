"""The course's processes as diffusers schedulers, and back.

A course checkpoint's card names its process (``course_lib.processes``); diffusers keeps the same facts in a
scheduler config. The map:

    DDPMProcess                              DDPMScheduler / DDIMScheduler
        T                                        num_train_timesteps
        schedule "linear" (Ho et al.)            beta_schedule "linear", beta_start 1e-4 * 1000 / T,
                                                 beta_end 0.02 * 1000 / T (the course scales both ends for
                                                 T != 1000, as Nichol & Dhariwal's code; clipped at 0.999 for
                                                 T < 20, where the betas are written out: trained_betas)
        schedule "cosine" (Nichol & Dhariwal)    beta_schedule "squaredcos_cap_v2" (s = 0.008, max beta 0.999)
        parameterization "eps" / "x0" / "v"      prediction_type "epsilon" / "sample" / "v_prediction"
        ddpm_sample(variance="beta_tilde")       variance_type "fixed_small"  ("beta": "fixed_large")
        clip_x0 (True for pixels, False for      clip_sample, clip_sample_range 1.0
        latents: Process.latent_options)
        ddim_sample's grid, always from T-1      timestep_spacing "trailing": T-1, T-1-T/n, ..., T/n-1, then x_0
    RectifiedFlowProcess                     FlowMatchEulerDiscreteScheduler
        x_t = (1 - t) x_0 + t eps, v = eps - x_0   the same (sigma = t; SD3's and Flux's flow matching)
        time_scale (the network sees 1000 t)     num_train_timesteps (the scheduler's timestep is 1000 sigma)
        flow_time_grid(n), uniform               set_timesteps(sigmas=np.linspace(1, 1 / n, n)) (FluxPipeline's
                                                 grid; the scheduler appends sigma = 0), shift 1.0

The same steps from the same noise: DDPMScheduler.step is ancestral sampling (Ho et al., Algorithm 2) with the
course's posterior, DDIMScheduler.step (``use_clipped_model_output=True``, as the course re-derives eps from a
clipped x0) is ``ddim_sample`` when n divides T (DDIM steps from t to t - T // n), and FlowMatchEulerDiscreteScheduler
is ``flow_sample(sampler="euler")``; each draws its noise from the generator in the course's order.
``tests/test_export.py`` runs both loops side by side.
"""

from __future__ import annotations

import math

import torch

from ..processes import DDPMProcess, Process, RectifiedFlowProcess
from ..schedules import SCHEDULES
from .maps import LayoutError, config_value, refuse

__all__ = ["PREDICTION_TYPES", "ddpm_scheduler_config", "ddim_scheduler_config", "flow_scheduler_config",
           "scheduler_for", "process_from_scheduler", "SCHEDULER_DEFAULTS"]

#: the course's parameterisations as diffusers' prediction types
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

#: scheduler defaults (diffusers 0.42) for the keys an older scheduler_config.json does not write
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                      "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True,
                      "clip_sample_range": 1.0, "prediction_type": "epsilon", "thresholding": False,
                      "rescale_betas_zero_snr": False, "timestep_spacing": "leading", "steps_offset": 0, "shift": 1.0,
                      "use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
                      "stochastic_sampling": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                      "use_beta_sigmas": False}


def _betas(process: DDPMProcess) -> dict:
    """The beta schedule of ``process`` in diffusers' words: a named schedule when diffusers' formula gives the
    course's betas, else the betas themselves."""
    T = process.T
    if process.schedule == "cosine":
        return {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None}
    scale = 1000.0 / T
    if 0.02 * scale <= 0.999:  # no clipping: exactly a linspace from end to end
        return {"beta_schedule": "linear", "beta_start": 1e-4 * scale, "beta_end": 0.02 * scale, "trained_betas": None}
    return {"beta_schedule": "linear", "trained_betas": SCHEDULES["linear"](T).tolist()}


def ddpm_scheduler_config(process: DDPMProcess, *, clip_sample: bool = True) -> dict:
    """``DDPMScheduler(**config)`` steps as ``process``'s ancestral sampler (``ddpm_sample``); ``clip_sample``: the
    course's ``clip_x0`` (True for pixels, False for latents)."""
    return {"num_train_timesteps": process.T, **_betas(process), "variance_type": "fixed_small",
            "clip_sample": clip_sample, "clip_sample_range": 1.0,
            "prediction_type": PREDICTION_TYPES[process.parameterization], "thresholding": False,
            "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": False}


def ddim_scheduler_config(process: DDPMProcess, *, clip_sample: bool = True) -> dict:
    """``DDIMScheduler(**config)`` steps as ``ddim_sample(timesteps=scheduler.timesteps)``: the trailing grid
    starts at T - 1 as the course's does; the last step lands on x_0 (``set_alpha_to_one``)."""
    config = ddpm_scheduler_config(process, clip_sample=clip_sample)
    del config["variance_type"]
    return {**config, "set_alpha_to_one": True}


def flow_scheduler_config(process: RectifiedFlowProcess) -> dict:
    """``FlowMatchEulerDiscreteScheduler(**config)``: Euler steps on ``process``'s flow, with the network given the
    scheduler's ``timestep`` = num_train_timesteps x sigma, i.e. the course's ``time_scale`` x t."""
    if not float(process.time_scale).is_integer():
        raise LayoutError(f"time_scale={process.time_scale}: diffusers' flow scheduler gives the network "
                          "num_train_timesteps x sigma with an integer num_train_timesteps, so it is not exported")
    return {"num_train_timesteps": int(process.time_scale), "shift": 1.0, "use_dynamic_shifting": False,
            "base_shift": 0.5, "max_shift": 1.15, "invert_sigmas": False, "shift_terminal": None,
            "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
            "time_shift_type": "exponential", "stochastic_sampling": False}


def scheduler_for(process: Process, *, latent: bool = False) -> tuple[str, dict]:
    """``(class name, config)`` of the diffusers scheduler of ``process``: a DDPMScheduler (DDIMScheduler reads its
    config too) or a FlowMatchEulerDiscreteScheduler. ``latent``: the model denoises an autoencoder's latents, so
    x0 is not clipped (the course's ``Process.latent_options``)."""
    if isinstance(process, DDPMProcess):
        return "DDPMScheduler", ddpm_scheduler_config(process, clip_sample=not latent)
    if isinstance(process, RectifiedFlowProcess):
        return "FlowMatchEulerDiscreteScheduler", flow_scheduler_config(process)
    raise LayoutError(f"no diffusers scheduler is written for the course's {type(process).__name__}")


def _schedule_name(get, T: int) -> str:
    """Which of the course's schedules a DDPM/DDIM scheduler config describes, or a LayoutError saying why none."""
    if get("trained_betas") is not None:
        betas = torch.tensor(get("trained_betas"), dtype=torch.float64)
        for name, make in SCHEDULES.items():
            if betas.shape == (T,) and torch.allclose(betas, make(T), rtol=1e-6, atol=1e-9):
                return name
        raise LayoutError("trained_betas that are neither of the course's schedules (linear, cosine)")
    if get("beta_schedule") == "squaredcos_cap_v2":
        return "cosine"
    if get("beta_schedule") == "linear":
        start, end = 1e-4 * 1000 / T, 0.02 * 1000 / T
        if math.isclose(get("beta_start"), start, rel_tol=1e-6) and math.isclose(get("beta_end"), end, rel_tol=1e-6) \
                and end <= 0.999:
            return "linear"
        raise LayoutError(f"beta_schedule='linear' from {get('beta_start')} to {get('beta_end')} over T={T}: the "
                          f"course's linear schedule runs from 1e-4 x 1000/T to 0.02 x 1000/T ({start:.6g} to "
                          f"{end:.6g})")
    raise LayoutError(f"beta_schedule={get('beta_schedule')!r} (the course has 'linear' and 'cosine' "
                      "(squaredcos_cap_v2))")


def process_from_scheduler(class_name: str, config: dict) -> tuple[Process, dict]:
    """``(process, sampler hints)`` from a diffusers scheduler config: the course's process (what the network was
    trained for), and the sampling choices the config records that are options of the course's samplers, not of
    the process (``{"variance": "beta"}`` for fixed_large, ``{"clip_x0": False}``, ``{"shift": 3.0}``, ...)."""
    get = lambda key: config_value(config, key, SCHEDULER_DEFAULTS)  # noqa: E731
    what = f"this {class_name}'s process is not one of the course's"
    if class_name == "FlowMatchEulerDiscreteScheduler":
        refuse(what, ["invert_sigmas=True (noise at sigma 0: the course puts it at t = 1)"] if get("invert_sigmas")
               else [], "it is not imported")
        hints = {key: get(key) for key in ("shift", "use_dynamic_shifting", "stochastic_sampling", "shift_terminal")
                 if get(key) != SCHEDULER_DEFAULTS[key]}
        return RectifiedFlowProcess(time_scale=float(get("num_train_timesteps"))), hints
    if class_name not in ("DDPMScheduler", "DDIMScheduler"):
        raise LayoutError(f"a {class_name} is not imported: the course reads DDPMScheduler, DDIMScheduler and "
                          "FlowMatchEulerDiscreteScheduler configs")
    T = int(get("num_train_timesteps"))
    problems = []
    try:
        schedule = _schedule_name(get, T)
    except LayoutError as err:
        problems.append(str(err))
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(get("prediction_type"))
    if prediction is None:
        problems.append(f"prediction_type={get('prediction_type')!r} (the course predicts epsilon, sample or "
                        "v_prediction)")
    if get("rescale_betas_zero_snr"):
        problems.append("rescale_betas_zero_snr=True (the course's schedules keep their last SNR above zero)")
    variance = config.get("variance_type", "fixed_small")
    if class_name == "DDPMScheduler" and variance not in ("fixed_small", "fixed_large"):
        problems.append(f"variance_type={variance!r} (the course's DDPM sampler has the fixed variances "
                        "beta_tilde and beta, no learned one)")
    refuse(what, problems, "it is not imported")
    hints = {"clip_x0": bool(get("clip_sample"))}
    if class_name == "DDPMScheduler" and variance == "fixed_large":
        hints["variance"] = "beta"
    if get("thresholding"):
        hints["thresholding"] = True
    return DDPMProcess(schedule=schedule, T=T, parameterization=prediction), hints
