// Refuses a kernels.wasm that could touch memory it was not given: it must import its memory
// (tfjs-backend-wasm's) and have no data segments; build.sh checks the code never reads or writes a
// global (the linker's __stack_pointer is emitted but must stay unused).
const fs = require('fs');
const bytes = fs.readFileSync(process.argv[2]);
const mod = new WebAssembly.Module(bytes);
const imports = WebAssembly.Module.imports(mod);
const bad = [];
if (imports.length !== 1 || imports[0].kind !== 'memory') bad.push(`imports: ${JSON.stringify(imports)}`);
let p = 8;
const leb = () => { let r = 0, s = 0, b; do { b = bytes[p++]; r |= (b & 0x7f) << s; s += 7; } while (b & 0x80); return r >>> 0; };
while (p < bytes.length) {
  const id = bytes[p++];
  const size = leb();
  if (id === 11 || id === 12) bad.push('has data segments');
  p += size;
}
if (bad.length) { console.error('kernels.wasm rejected:', bad.join('; ')); process.exit(1); }
console.log('exports:', WebAssembly.Module.exports(mod).map((e) => e.name).join(', '));
