#!/usr/bin/env node
// Runs ONNX models with ONNX Runtime (Node) for the generation-time check.
//
// Usage: node verify_ort.js <manifest.json>
// The manifest is a JSON list of {"model": path, "input": path, "output": path}
// entries.  Each input is a float32 .npy (little-endian, C order) fed to the
// graph input named "input"; the graph output "output" is written to the
// given path as a float32 .npy.  Exits with status 2 when onnxruntime-node
// cannot be loaded.
'use strict';
const fs = require('fs');

const ORT_PATH = process.env.QFORGE_ORT_NODE ||
    require('path').join(__dirname, '..', '..', '.deps', 'ort', 'node_modules', 'onnxruntime-node');

function readNpy(path) {
  const buf = fs.readFileSync(path);
  if (buf.readUInt8(0) !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new Error(path + ': not a .npy file');
  }
  const major = buf.readUInt8(6);
  let headerLen, offset;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    offset = 10;
  } else {
    headerLen = buf.readUInt32LE(8);
    offset = 12;
  }
  const header = buf.toString('latin1', offset, offset + headerLen);
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error(path + ': dtype is not <f4');
  if (!/'fortran_order':\s*False/.test(header)) throw new Error(path + ': not C order');
  const m = /'shape':\s*\(([^)]*)\)/.exec(header);
  const dims = m[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const start = offset + headerLen;
  const count = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = buf.readFloatLE(start + 4 * i);
  return { dims, data };
}

function writeNpy(path, dims, data) {
  const shape = dims.length === 1 ? '(' + dims[0] + ',)' : '(' + dims.join(', ') + ')';
  let header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ', }';
  // Pad so that magic (6) + version (2) + length (2) + header is a multiple of 64.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header + ' '.repeat(total - 10 - header.length - 1) + '\n';
  const out = Buffer.alloc(total + 4 * data.length);
  out.writeUInt8(0x93, 0);
  out.write('NUMPY', 1, 'latin1');
  out.writeUInt8(1, 6);
  out.writeUInt8(0, 7);
  out.writeUInt16LE(header.length, 8);
  out.write(header, 10, 'latin1');
  for (let i = 0; i < data.length; i++) out.writeFloatLE(data[i], total + 4 * i);
  fs.writeFileSync(path, out);
}

async function main() {
  let ort;
  try {
    ort = require(ORT_PATH);
  } catch (e) {
    console.error('onnxruntime-node not available at ' + ORT_PATH + ': ' + e.message);
    process.exit(2);
  }
  const manifest = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const sessions = new Map();
  for (const item of manifest) {
    if (!sessions.has(item.model)) {
      sessions.set(item.model, await ort.InferenceSession.create(item.model));
    }
    const session = sessions.get(item.model);
    const x = readNpy(item.input);
    const result = await session.run({ input: new ort.Tensor('float32', x.data, x.dims) });
    const y = result.output;
    writeNpy(item.output, y.dims, y.data);
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
