//! A small x86-64 emulator for the tests of the micro-kernels on machines whose CPU lacks
//! the instructions (AVX-512, AVX512_BF16): it decodes the assembled bytes with iced-x86
//! and runs the few instructions the bf16 kernels use, on memory that is a list of
//! regions (a read or write outside every region is an error, so a kernel that touches
//! a byte it should not fails its test). Semantics follow the Intel SDM's pseudocode;
//! `vdpbf16ps` and `vcvtneps2bf16` treat denormal inputs as zero, flush denormal results
//! and round to nearest even, whatever MXCSR says.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// A block of emulated memory.
pub(crate) struct Region {
    bytes: Vec<u8>,
}

impl Region {
    pub fn new(bytes: Vec<u8>) -> Region {
        Region { bytes }
    }
}

/// Where region `i` starts: far apart, so that no access strays into a neighbour.
fn region_base(i: usize) -> u64 {
    0x1000_0000 * (i as u64 + 1)
}

pub(crate) struct Emulator {
    instructions: Vec<Instruction>,
    regions: Vec<Region>,
    gpr: [u64; 16],
    vectors: [[u32; 16]; 32],
    masks: [u16; 8],
    zero_flag: bool,
}

/// The 16 lanes of a vector register.
type Lanes = [u32; 16];

impl Emulator {
    pub fn new(code: &[u8]) -> Emulator {
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let instructions: Vec<Instruction> = decoder.iter().collect();
        Emulator {
            instructions,
            regions: Vec::new(),
            gpr: [0; 16],
            vectors: [[0; 16]; 32],
            masks: [0; 8],
            zero_flag: false,
        }
    }

    /// Adds a region; returns its address.
    pub fn map(&mut self, region: Region) -> u64 {
        self.regions.push(region);
        region_base(self.regions.len() - 1)
    }

    /// The bytes of the region at `address` (as `map` returned it).
    pub fn region(&self, address: u64) -> &[u8] {
        &self.regions[(address / 0x1000_0000 - 1) as usize].bytes
    }

    fn slice(&mut self, address: u64, len: usize) -> Result<&mut [u8], String> {
        for (i, region) in self.regions.iter_mut().enumerate() {
            let base = region_base(i);
            if address >= base && address + len as u64 <= base + region.bytes.len() as u64 {
                let start = (address - base) as usize;
                return Ok(&mut region.bytes[start..start + len]);
            }
        }
        Err(format!("access of {len} bytes at {address:#x} outside every region"))
    }

    fn read_u32(&mut self, address: u64) -> Result<u32, String> {
        let b = self.slice(address, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn write_u32(&mut self, address: u64, value: u32) -> Result<(), String> {
        self.slice(address, 4)?.copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn gpr_index(register: Register) -> Result<usize, String> {
        let full = register.full_register();
        let order = [
            Register::RAX,
            Register::RCX,
            Register::RDX,
            Register::RBX,
            Register::RSP,
            Register::RBP,
            Register::RSI,
            Register::RDI,
            Register::R8,
            Register::R9,
            Register::R10,
            Register::R11,
            Register::R12,
            Register::R13,
            Register::R14,
            Register::R15,
        ];
        order.iter().position(|&r| r == full).ok_or_else(|| format!("not a general register: {register:?}"))
    }

    fn vector_index(register: Register) -> Result<usize, String> {
        if register.is_zmm() || register.is_ymm() || register.is_xmm() {
            Ok(register.number())
        } else {
            Err(format!("not a vector register: {register:?}"))
        }
    }

    /// The lanes a register operand has: 16 for zmm, 8 for ymm.
    fn width(register: Register) -> usize {
        if register.is_zmm() {
            16
        } else if register.is_ymm() {
            8
        } else {
            4
        }
    }

    fn address(&self, instruction: &Instruction) -> Result<u64, String> {
        if instruction.memory_index() != Register::None {
            return Err(format!("indexed addressing is not emulated: {:?}", instruction.code()));
        }
        let base = self.gpr[Self::gpr_index(instruction.memory_base())?];
        Ok(base.wrapping_add(instruction.memory_displacement64()))
    }

    /// The write mask of an instruction: all lanes unless it names k1..k7.
    fn mask(&self, instruction: &Instruction) -> u16 {
        match instruction.op_mask() {
            Register::None => 0xffff,
            k => self.masks[k.number()],
        }
    }

    /// Writes a vector result: masked lanes merged or zeroed, lanes past the operand's
    /// width zeroed (VEX and EVEX writes clear the upper bits).
    fn set_vector(&mut self, instruction: &Instruction, register: Register, value: Lanes) -> Result<(), String> {
        let index = Self::vector_index(register)?;
        let mask = self.mask(instruction);
        let width = Self::width(register);
        let old = self.vectors[index];
        for lane in 0..16 {
            self.vectors[index][lane] = if lane >= width {
                0
            } else if mask & (1 << lane) != 0 {
                value[lane]
            } else if instruction.zeroing_masking() {
                0
            } else {
                old[lane]
            };
        }
        Ok(())
    }

    fn vector(&self, register: Register) -> Result<Lanes, String> {
        Ok(self.vectors[Self::vector_index(register)?])
    }

    /// Runs the code from its first instruction with the System V integer arguments
    /// (rdi, rsi, rdx, rcx, r8, r9) until its `ret`.
    pub fn call(&mut self, arguments: &[u64]) -> Result<(), String> {
        for (register, &value) in [7, 6, 2, 1, 8, 9].iter().zip(arguments) {
            self.gpr[*register] = value;
        }
        let mut ip = 0u64;
        for _ in 0..10_000_000 {
            let instruction =
                *self.instructions.iter().find(|i| i.ip() == ip).ok_or_else(|| format!("no instruction at {ip:#x}"))?;
            if instruction.code() == Code::INVALID {
                return Err(format!("invalid instruction at {ip:#x}"));
            }
            ip = instruction.next_ip();
            match self.step(&instruction)? {
                Flow::Next => {}
                Flow::Jump(target) => ip = target,
                Flow::Return => return Ok(()),
            }
        }
        Err("the code ran for 10 million instructions".into())
    }

    fn step(&mut self, i: &Instruction) -> Result<Flow, String> {
        let unsupported = || Err(format!("not emulated: {:?}", i.code()));
        match i.mnemonic() {
            Mnemonic::Ret => return Ok(Flow::Return),
            Mnemonic::Vzeroupper => {
                for v in &mut self.vectors {
                    v[4..].fill(0);
                }
            }
            Mnemonic::Mov if i.op0_kind() == OpKind::Register && i.op1_kind() != OpKind::Register => {
                let value = i.immediate(1);
                let r = i.op0_register();
                // 32-bit writes clear the upper half.
                self.gpr[Self::gpr_index(r)?] = if r.is_gpr32() { value & 0xffff_ffff } else { value };
            }
            Mnemonic::Add if i.op0_kind() == OpKind::Register => {
                let r = Self::gpr_index(i.op0_register())?;
                self.gpr[r] = self.gpr[r].wrapping_add(i.immediate(1));
                self.zero_flag = self.gpr[r] == 0;
            }
            Mnemonic::Dec => {
                let r = Self::gpr_index(i.op0_register())?;
                self.gpr[r] = self.gpr[r].wrapping_sub(1);
                self.zero_flag = self.gpr[r] == 0;
            }
            Mnemonic::Jne => {
                if !self.zero_flag {
                    return Ok(Flow::Jump(i.near_branch_target()));
                }
            }
            Mnemonic::Kmovw if i.op1_kind() == OpKind::Register && i.op1_register().is_gpr32() => {
                self.masks[i.op0_register().number()] = self.gpr[Self::gpr_index(i.op1_register())?] as u16;
            }
            Mnemonic::Vmovups | Mnemonic::Vmovaps if i.op0_kind() == OpKind::Memory => {
                let address = self.address(i)?;
                let value = self.vector(i.op1_register())?;
                let mask = self.mask(i);
                for (lane, &v) in value.iter().enumerate().take(Self::width(i.op1_register())) {
                    if mask & (1 << lane) != 0 {
                        self.write_u32(address + 4 * lane as u64, v)?;
                    }
                }
            }
            Mnemonic::Vmovups | Mnemonic::Vmovaps if i.op1_kind() == OpKind::Memory => {
                let address = self.address(i)?;
                let mask = self.mask(i);
                let mut value = [0u32; 16];
                for (lane, v) in value.iter_mut().enumerate().take(Self::width(i.op0_register())) {
                    if mask & (1 << lane) != 0 {
                        *v = self.read_u32(address + 4 * lane as u64)?;
                    }
                }
                self.set_vector(i, i.op0_register(), value)?;
            }
            Mnemonic::Vbroadcastss | Mnemonic::Vpbroadcastd if i.op1_kind() == OpKind::Memory => {
                let value = self.read_u32(self.address(i)?)?;
                self.set_vector(i, i.op0_register(), [value; 16])?;
            }
            Mnemonic::Vdpbf16ps if i.op2_kind() == OpKind::Register => {
                let mut acc = self.vector(i.op0_register())?;
                let (a, b) = (self.vector(i.op1_register())?, self.vector(i.op2_register())?);
                for lane in 0..16 {
                    let half = |v: u32, high: bool| bf16_to_f32(if high { (v >> 16) as u16 } else { v as u16 });
                    let mut t = daz(f32::from_bits(acc[lane]));
                    // The odd (high) products first, as the SDM writes it.
                    t = ftz(t + half(a[lane], true) * half(b[lane], true));
                    t = ftz(t + half(a[lane], false) * half(b[lane], false));
                    acc[lane] = t.to_bits();
                }
                self.set_vector(i, i.op0_register(), acc)?;
            }
            Mnemonic::Vcvtneps2bf16 if i.op1_kind() == OpKind::Register => {
                let source = self.vector(i.op1_register())?;
                let count = Self::width(i.op1_register());
                let mut value = [0u32; 16];
                for k in 0..count {
                    let half = f32_to_bf16(f32::from_bits(source[k])) as u32;
                    value[k / 2] |= half << (16 * (k % 2));
                }
                self.set_vector(i, i.op0_register(), value)?;
            }
            Mnemonic::Vpmovzxwd if i.op1_kind() == OpKind::Register => {
                let source = self.vector(i.op1_register())?;
                let count = Self::width(i.op0_register());
                let mut value = [0u32; 16];
                for (k, v) in value.iter_mut().enumerate().take(count) {
                    *v = (source[k / 2] >> (16 * (k % 2))) & 0xffff;
                }
                self.set_vector(i, i.op0_register(), value)?;
            }
            Mnemonic::Vpslld if i.op2_kind() == OpKind::Immediate8 => {
                let source = self.vector(i.op1_register())?;
                let shift = i.immediate8() as u32;
                let value = source.map(|v| if shift > 31 { 0 } else { v << shift });
                self.set_vector(i, i.op0_register(), value)?;
            }
            Mnemonic::Vpord if i.op2_kind() == OpKind::Register => {
                let (a, b) = (self.vector(i.op1_register())?, self.vector(i.op2_register())?);
                let value: Lanes = std::array::from_fn(|k| a[k] | b[k]);
                self.set_vector(i, i.op0_register(), value)?;
            }
            _ => return unsupported(),
        }
        Ok(Flow::Next)
    }
}

enum Flow {
    Next,
    Jump(u64),
    Return,
}

/// A denormal as a zero of its sign.
fn daz(x: f32) -> f32 {
    if x.is_subnormal() { f32::from_bits(x.to_bits() & 0x8000_0000) } else { x }
}

fn ftz(x: f32) -> f32 {
    daz(x)
}

fn bf16_to_f32(h: u16) -> f32 {
    daz(f32::from_bits((h as u32) << 16))
}

/// The SDM's `convert_fp32_to_bfloat16`: zero or denormal to a signed zero, NaN made
/// quiet, else round to nearest even by adding `0x7fff` plus the lowest kept bit.
fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else if bits & 0x7f80_0000 == 0 {
        ((bits >> 16) & 0x8000) as u16
    } else {
        (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
    }
}
